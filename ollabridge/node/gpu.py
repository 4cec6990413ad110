"""What GPU this machine has, as `nvidia-smi` tells it (none, when there is no nvidia-smi)."""

from __future__ import annotations

import asyncio
import shutil


async def detect() -> tuple[str | None, int | None]:
    """`(name, vram_mb)` of the first GPU, or `(None, None)`; no GPU info is fine."""
    if not shutil.which("nvidia-smi"):
        return None, None
    try:
        proc = await asyncio.create_subprocess_exec(
            "nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), 5)
        first = out.decode().strip().splitlines()[0]
        name, _, mem = first.partition(",")
        return name.strip() or None, int(float(mem.strip())) if mem.strip() else None
    except Exception:  # noqa: BLE001 - no GPU info is fine
        return None, None
