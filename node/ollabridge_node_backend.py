"""PEP 517 backend of `ollabridge-node` (`pip install ./node`): the wheel of ollabridge/node/package.py.

The agent's files come from the checkout (`../ollabridge`) or, in an sdist made here, from `./ollabridge`.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE if (HERE / "ollabridge" / "__init__.py").is_file() else HERE.parent
sys.path.insert(0, str(SOURCE))

from ollabridge import __version__  # noqa: E402
from ollabridge.node.package import DIST_NAME, agent_files, node_wheel, wheel_name  # noqa: E402


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = wheel_name()
    Path(wheel_directory, name).write_bytes(node_wheel(SOURCE / "ollabridge"))
    return name


def build_sdist(sdist_directory, config_settings=None):
    """The backend, its pyproject and the agent's files (with the packaging module that builds the wheel)."""
    base = f"{DIST_NAME.replace('-', '_')}-{__version__}"
    package = SOURCE / "ollabridge"
    files = {f"{base}/{p.name}": p for p in (HERE / "pyproject.toml", Path(__file__))}
    for path in [*agent_files(package), package / "node" / "package.py"]:
        files[f"{base}/{path.relative_to(SOURCE).as_posix()}"] = path
    files[f"{base}/PKG-INFO"] = None
    name = f"{base}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as tar:
        for arcname, path in sorted(files.items()):
            data = (f"Metadata-Version: 2.1\nName: {DIST_NAME}\nVersion: {__version__}\n".encode()
                    if path is None else path.read_bytes())
            info = tarfile.TarInfo(arcname)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return name
