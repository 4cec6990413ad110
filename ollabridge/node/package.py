"""The node agent as a package of its own: its files, a .tar.gz of them, and the `ollabridge-node` wheel.

`agent_files` follows the imports of `ollabridge node` (`ollabridge/__main__.py` and the command's
module, lazy imports in functions too) through this package, with the `__init__.py` of each package on
the way: nothing else that lies in the package folder (data, a token, a stray file) is ever shipped.

`node_wheel` builds `ollabridge_node-<version>-py3-none-any.whl` from exactly those files, with the
agent's own dependencies only (`AGENT_REQUIRES`, no Gradio or FastAPI) and the `ollabridge` console
script. The gateway serves it (`/node/<wheel>`, api/node_routes.py), so a node installs the very
agent that speaks its gateway's relay protocol; `pip install ./node` builds the same from a checkout
(node/ollabridge_node_backend.py). Standard library only: the build backend imports this.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

from ollabridge import __version__

PACKAGE = Path(__file__).resolve().parent.parent
DIST_NAME = "ollabridge-node"
#: What the agent imports besides the standard library; the same ranges as pyproject.toml's (a test checks).
AGENT_REQUIRES = ("httpx>=0.27", "websockets>=13")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # every file's time in the wheel: the same agent gives the same bytes


def _module_file(package: Path, name: str) -> Path | None:
    """The source file of module `name` (dotted, inside `package`), or None when there is none."""
    parts = name.split(".")
    if parts[0] != package.name:
        return None
    base = package.parent.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file() and not candidate.is_symlink():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """The modules of `path` (module `module`) imports anywhere in it, functions too (lazy imports):
    `from a import b` may import the module `a.b`, so both are named."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def agent_files(package: Path = PACKAGE) -> list[Path]:
    """The files `ollabridge node` runs: `__main__.py`, the node command's module, and every module of
    the package they import, transitively, with the `__init__.py` of each package on the way."""
    from ollabridge.__main__ import COMMANDS

    todo = [f"{package.name}.__main__", COMMANDS["node"][1].replace("ollabridge", package.name, 1)]
    found: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        path = _module_file(package, name)
        if name in found or path is None:
            continue
        found[name] = path
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo.extend(parents + sorted(_imports(path, name)))
    return sorted(set(found.values()))


def _agent_entries(package: Path) -> list[tuple[str, bytes]]:
    return [(path.relative_to(package.parent).as_posix(), path.read_bytes()) for path in agent_files(package)]


def agent_archive(package: Path = PACKAGE) -> bytes:
    """The agent's files as a .tar.gz (unpack it, then `python -m ollabridge node` from there)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in _agent_entries(package):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wheel_name(version: str = __version__) -> str:
    return f"{DIST_NAME.replace('-', '_')}-{version}-py3-none-any.whl"


def _metadata(version: str) -> str:
    requires = "".join(f"Requires-Dist: {req}\n" for req in AGENT_REQUIRES)
    return (f"Metadata-Version: 2.1\nName: {DIST_NAME}\nVersion: {version}\n"
            "Summary: OllaBridge's GPU node agent alone: `ollabridge node --cloud <gateway>`\n"
            f"Requires-Python: >=3.11\n{requires}")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}\n"


def node_wheel(package: Path = PACKAGE, version: str = __version__) -> bytes:
    """The `ollabridge-node` wheel: the agent's files, its metadata and the `ollabridge` console script."""
    info = f"{DIST_NAME.replace('-', '_')}-{version}.dist-info"
    entries = _agent_entries(package) + [
        (f"{info}/METADATA", _metadata(version).encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: ollabridge.node.package\nRoot-Is-Purelib: true\n"
                          b"Tag: py3-none-any\n"),
        (f"{info}/entry_points.txt", b"[console_scripts]\nollabridge = ollabridge.__main__:main\n"),
    ]
    record = "".join(_record_line(name, data) for name, data in entries) + f"{info}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in [*entries, (f"{info}/RECORD", record.encode())]:
            member = zipfile.ZipInfo(name, _EPOCH)
            member.external_attr = 0o644 << 16
            member.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(member, data)
    return buf.getvalue()
