"""`GET /node/ollabridge.tar.gz`: the node agent, served by the gateway it will connect to.

The Colab notebook installs the agent from the Space itself: the only thing a newcomer edits is the
Space URL, the agent always speaks the relay protocol of that very gateway, and nothing depends on a
package index or a git host being reachable. The archive is this running `ollabridge` package
(source files only); unpack it anywhere and run `python -m ollabridge node --cloud <url>` from there
(it needs httpx and websockets).
"""

from __future__ import annotations

import io
import tarfile
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from ollabridge import __version__

router = APIRouter(tags=["Device relay"])
PACKAGE = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def package_archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(PACKAGE.rglob("*")):
            rel = path.relative_to(PACKAGE.parent)
            if "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo") or not path.is_file():
                continue
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
