"""`GET /node/ollabridge.tar.gz`: the node agent, served by the gateway it will connect to.

The Colab notebook installs the agent from the Space itself: the only thing a newcomer edits is the
Space URL, the agent always speaks the relay protocol of that very gateway, and nothing depends on a
package index or a git host being reachable. The archive holds exactly the agent's files of this
running `ollabridge` package: the modules `python -m ollabridge node` imports, found by following
their imports from `ollabridge/__main__.py` (`agent_files`), and the `__init__.py` of their packages.
Nothing else that lies in the package folder (data, a token, a stray file) is in it. Unpack it anywhere
and run `python -m ollabridge node --cloud <url>` from there (it needs httpx and websockets).
"""

from __future__ import annotations

import ast
import io
import tarfile
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from ollabridge import __version__

router = APIRouter(tags=["Device relay"])
PACKAGE = Path(__file__).resolve().parent.parent


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
    """The files `python -m ollabridge node` runs: `__main__.py` and every module of the package it
    imports, transitively, with the `__init__.py` of each package on the way."""
    todo = [f"{package.name}.__main__"]
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


@lru_cache(maxsize=1)
def package_archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in agent_files():
            rel = path.relative_to(PACKAGE.parent)
            info = tar.gettarinfo(str(path), arcname=str(rel))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


@router.get("/node/ollabridge.tar.gz", response_class=Response,
            responses={200: {"content": {"application/gzip": {}},
                             "description": "The `ollabridge` package, to run `python -m ollabridge node`."}})
async def node_package():
    """The node agent (this gateway's `ollabridge` package) as a .tar.gz; see the Colab notebook."""
    return Response(package_archive(), media_type="application/gzip",
                    headers={"Content-Disposition": f'attachment; filename="ollabridge-{__version__}.tar.gz"',
                             "Cache-Control": "no-cache"})
