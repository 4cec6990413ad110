"""The node agent, served by the gateway it will connect to: `GET /node/<wheel>` and `/node/ollabridge.tar.gz`.

A GPU machine installs the agent from the Space itself, with one command and the agent's own
dependencies only: `pip install https://<space>/node/ollabridge_node-<version>-py3-none-any.whl`
(the Colab notebook does). The only thing a newcomer edits is the Space URL, the agent always speaks
the relay protocol of that very gateway, and nothing depends on a git host being reachable. Both
forms hold exactly the agent's files of this running `ollabridge` package (ollabridge/node/package.py).
The .tar.gz is the older form: unpack it and run `python -m ollabridge node --cloud <url>` from there.
"""

from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ollabridge import __version__
from ollabridge.node.package import agent_archive, node_wheel, wheel_name

router = APIRouter(tags=["Device relay"])
WHEEL = wheel_name()


@lru_cache(maxsize=1)
def package_archive() -> bytes:
    return agent_archive()


@lru_cache(maxsize=1)
def package_wheel() -> bytes:
    return node_wheel()


@router.get("/node/ollabridge.tar.gz", response_class=Response,
            responses={200: {"content": {"application/gzip": {}},
                             "description": "The node agent's files, to run `python -m ollabridge node`."}})
async def node_package():
    """The node agent (this gateway's `ollabridge` package, its agent files) as a .tar.gz."""
    return Response(package_archive(), media_type="application/gzip",
                    headers={"Content-Disposition": f'attachment; filename="ollabridge-{__version__}.tar.gz"',
                             "Cache-Control": "no-cache"})


@router.get(f"/node/{WHEEL}", response_class=Response,
            responses={200: {"content": {"application/zip": {}},
                             "description": "The `ollabridge-node` wheel: `pip install <this URL>`."}})
async def node_wheel_file():
    """The node agent as a wheel (`ollabridge-node`, needing only httpx and websockets); see the notebook."""
    return Response(package_wheel(), media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{WHEEL}"', "Cache-Control": "no-cache"})


@router.get("/node/{name}.whl", include_in_schema=False)
async def other_wheel(name: str):
    """A wheel of another version (a README older or newer than this gateway): say which one is here."""
    return JSONResponse({"error": f"this gateway serves /node/{WHEEL} (ollabridge-node {__version__})",
                         "wheel": f"/node/{WHEEL}"}, status_code=404)
