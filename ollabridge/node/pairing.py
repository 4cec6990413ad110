"""Pairing by code, the node's side of the device flow (RFC 8628).

`pair` asks the gateway for a code (`POST /device/start`, waiting out a 429 and retrying with
backoff while it is unreachable), shows it in big letters with where to approve it, and polls
`POST /device/token` until the owner approves (the credential to save), the code expires (a new
one), or the owner denies it (`Denied`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from ollabridge.node import backoff
from ollabridge.node.banner import big, say

log = logging.getLogger("ollabridge.node")


class Denied(Exception):
    """The owner denied this pairing request."""


async def pair(cloud: str, name: str, offer: dict[str, Any]) -> dict[str, Any]:
    """Run the device flow until the owner approves; returns the credential to save."""
    failures = 0
    async with httpx.AsyncClient(base_url=cloud, timeout=15.0) as client:
        while True:
            try:
                started = await client.post("/device/start", json=offer)
                if started.status_code == 429:
                    wait = _retry_after(started, 30)
                    say(f"{cloud} asks to wait {wait:g}s before pairing again.")
                    await asyncio.sleep(wait)
                    continue
                started.raise_for_status()
                flow = started.json()
            except (httpx.HTTPError, ValueError) as exc:
                failures += 1
                delay = backoff.delay(failures)
                say(f"Could not reach {cloud} to pair ({exc}); retrying in {delay:.1f}s")
                await asyncio.sleep(delay)
                continue
            show_code(cloud, name, flow)
            cred = await _wait_approval(client, cloud, flow)
            if cred is not None:
                return {**cred, "name": name, "cloud": cloud, "saved_at": time.time()}
            say("The code expired before it was approved; here is a new one.")


def _retry_after(answer: httpx.Response, default: float) -> float:
    try:
        return max(1.0, float(answer.headers.get("Retry-After") or default))
    except ValueError:
        return default


def show_code(cloud: str, name: str, flow: dict[str, Any]) -> None:
    code = flow["user_code"]
    bar = "=" * 64
    say(f"\n{bar}\n  Pair this machine ({name}) with {cloud}\n\n{big(code)}\n\n"
        f"  Code: {code}\n  Approve it at:  {flow.get('verification_uri_complete') or flow['verification_uri']}\n"
        f"  (Pair tab, signed in with the admin token), or with:\n"
        f"    curl -X POST {cloud}/device/approve -H 'Authorization: Bearer <admin token>' \\\n"
        f"         -H 'Content-Type: application/json' -d '{{\"user_code\": \"{code}\"}}'\n"
        f"  The code expires in {int(flow.get('expires_in', 600)) // 60} minutes.\n{bar}\n")


async def _wait_approval(client: httpx.AsyncClient, cloud: str, flow: dict[str, Any]) -> dict[str, Any] | None:
    interval = float(flow.get("interval") or 5)
    deadline = time.monotonic() + float(flow.get("expires_in") or 600) + 5
    while time.monotonic() < deadline:
        await asyncio.sleep(interval)
        try:
            answer = await client.post("/device/token", json={"device_code": flow["device_code"]})
            data = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.info("polling for approval failed (%s); trying again", exc)
            continue
        if answer.status_code == 200 and data.get("node_token"):
            return data
        if answer.status_code == 429:  # too many wrong tries from this address: wait as told, keep the code
            await asyncio.sleep(_retry_after(answer, interval))
            continue
        error = data.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        if error == "access_denied":
            raise Denied(f"The owner of {cloud} denied this pairing request.")
        return None  # expired_token, invalid_grant: start over with a new code
    return None
