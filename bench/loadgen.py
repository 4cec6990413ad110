"""The load generator: one measurement per process, spec in, JSON out.

    python bench/loadgen.py '{"mode": "latency", "port": 8000, "path": "/v1/chat/completions", ...}'

A minimal HTTP/1.1 keep-alive client on raw asyncio protocols (no httpx, no framework) so that
the client costs little next to what it measures, and every chunk is timestamped when it arrives.
Modes:

* ``latency``    sequential non-streaming requests on one connection: p50/p99/mean microseconds;
* ``throughput`` N concurrent connections for D seconds, non-streaming: requests/s;
* ``stream``     sequential streaming requests: time to first content chunk, content chunks/s;
* ``many``       N concurrent streams opened over a ramp: gaps between content chunks, errors.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import statistics
import sys
import time
from typing import Any

try:  # the load generator must cost little next to what it measures: uvloop when installed
    from uvloop import run as _run
except ImportError:  # pragma: no cover
    _run = asyncio.run

CONTENT = re.compile(rb'"content": ?"[^"]')
now = time.perf_counter


class HTTPError(Exception):
    pass


class Client(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future | None = None
        self.record = False

    # -- transport -----------------------------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(HTTPError(f"connection lost: {exc!r}"))

    # -- one exchange --------------------------------------------------------------------
    def send(self, raw: bytes, sep: bytes | None, record: bool = False) -> asyncio.Future:
        assert self.transport is not None
        self.buf = b""
        self.state = "head"
        self.status = 0
        self.length = -1
        self.sep = sep
        self.ebuf = b""
        self.record = record
        self.first = 0.0  # first content chunk
        self.last = 0.0
        self.contents = 0
        self.stamps: list[float] = []
        self.keep = True
        self.waiter = asyncio.get_running_loop().create_future()
        self.sent = now()
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        t = now()
        self.buf += data
        try:
            self._parse(t)
        except Exception as exc:  # noqa: BLE001 - a malformed reply is an error of the run
            self._finish(exc)

    def _parse(self, t: float) -> None:
        if self.state == "head":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buf[:end].split(b"\r\n")
            self.buf = self.buf[end + 4:]
            self.status = int(lines[0].split(b" ", 2)[1])
            chunked = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self.length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and b"close" in value.lower():
                    self.keep = False
            self.state = "chunked" if chunked else "length"
        if self.state == "length":
            if self.length < 0:
                return  # read to close: not used by any server here
            if len(self.buf) >= self.length:
                body, self.buf = self.buf[:self.length], self.buf[self.length:]
                self._feed(body, t)
                self._finish()
            return
        while self.state == "chunked":
            line_end = self.buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(self.buf[:line_end].split(b";")[0], 16)
            if size == 0:  # last chunk; no trailers from any server here
                if len(self.buf) < line_end + 4:
                    return
                self.buf = b""
                self._finish()
                return
            if len(self.buf) < line_end + 2 + size + 2:
                return
            piece = self.buf[line_end + 2:line_end + 2 + size]
            self.buf = self.buf[line_end + 4 + size:]
            self._feed(piece, t)

    def _feed(self, piece: bytes, t: float) -> None:
        if self.sep is None:
            self.body = piece
            return
        self.ebuf += piece
        events = self.ebuf.split(self.sep)
        self.ebuf = events.pop()
        for event in events:
            if CONTENT.search(event):
                self.contents += 1
                if not self.first:
                    self.first = t
                self.last = t
                if self.record:
                    self.stamps.append(t)

    def _finish(self, exc: Exception | None = None) -> None:
        if self.waiter is None or self.waiter.done():
            return
        if exc is None and self.status != 200:
            exc = HTTPError(f"HTTP {self.status}")
            exc.detail = (self.ebuf or getattr(self, "body", b""))[:300].decode(errors="replace")
        if exc is not None:
            self.waiter.set_exception(exc)
        else:
            self.waiter.set_result(now())
        if not self.keep and self.transport:
            self.transport.close()
            self.closed = True


def request_bytes(spec: dict[str, Any], body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {spec['path']} HTTP/1.1\r\nHost: 127.0.0.1:{spec['port']}\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer sk-bench-7f3a9c2e51d84b06a1e9f0c3d5b7a2e4\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def connect(port: int) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(Client, "127.0.0.1", port)
    return client


class Conn:
    """A client that reconnects when the server closed the connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client: Client | None = None

    async def get(self) -> Client:
        if self.client is None or self.client.closed:
            self.client = await connect(self.port)
        return self.client


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary_us(values: list[float]) -> dict[str, float]:
    us = [v * 1e6 for v in values]
    return {"p50_us": pct(us, 0.5), "p99_us": pct(us, 0.99), "mean_us": statistics.fmean(us) if us else 0.0,
            "min_us": min(us, default=0.0), "max_us": max(us, default=0.0), "n": len(us)}


# -- modes --------------------------------------------------------------------------------
async def latency(spec: dict[str, Any]) -> dict[str, Any]:
    raw = request_bytes(spec, spec["body"])
    conn = Conn(spec["port"])
    samples, errors = [], 0
    for i in range(spec.get("warmup", 20) + spec["n"]):
        client = await conn.get()
        try:
            end = await client.send(raw, None)
        except HTTPError:
            errors += 1
            continue
        if i >= spec.get("warmup", 20):
            samples.append(end - client.sent)
    return {**summary_us(samples), "errors": errors, "all_requests": spec.get("warmup", 20) + spec["n"]}


async def throughput(spec: dict[str, Any]) -> dict[str, Any]:
    raw = request_bytes(spec, spec["body"])
    counting = False
    stop = False
    done = errors = every = 0

    async def worker() -> None:
        nonlocal done, errors, every
        conn = Conn(spec["port"])
        while not stop:
            try:
                client = await conn.get()
                await client.send(raw, None)
                every += 1
                if counting:
                    done += 1
            except (HTTPError, OSError):
                if counting:
                    errors += 1
                await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(worker()) for _ in range(spec["concurrency"])]
    await asyncio.sleep(spec.get("warmup", 1.0))
    counting, t0 = True, now()
    await asyncio.sleep(spec["duration"])
    counting, elapsed = False, now() - t0
    total = done
    stop = True
    await asyncio.wait(tasks, timeout=10)
    for task in tasks:
        task.cancel()
    # all_requests (warm-up included) is what the proxy's CPU time is divided by.
    return {"rps": total / elapsed, "requests": total, "all_requests": every, "errors": errors,
            "seconds": elapsed}


def _sep(spec: dict[str, Any]) -> bytes:
    return b"\n\n" if spec.get("sse", True) else b"\n"


async def stream(spec: dict[str, Any]) -> dict[str, Any]:
    raw = request_bytes(spec, spec["body"])
    conn = Conn(spec["port"])
    ttfts, rates, counts, errors, every = [], [], [], 0, 0
    for i in range(spec.get("warmup", 3) + spec["n"]):
        client = await conn.get()
        try:
            await client.send(raw, _sep(spec))
        except HTTPError:
            errors += 1
            continue
        every += client.contents
        if i < spec.get("warmup", 3) or not client.first:
            continue
        ttfts.append(client.first - client.sent)
        counts.append(client.contents)
        # chunks/s over the whole exchange, from the request on: what the caller gets.
        rates.append(client.contents / max(client.last - client.sent, 1e-9))
    return {"ttft": summary_us(ttfts), "chunks_per_s": statistics.median(rates) if rates else 0.0,
            "chunks": statistics.median(counts) if counts else 0, "errors": errors,
            "all_chunks": every}


async def many(spec: dict[str, Any]) -> dict[str, Any]:
    raw = request_bytes(spec, spec["body"])
    n, ramp, expected = spec["streams"], spec.get("ramp", 2.0), spec["expected_chunks"]
    gaps: list[float] = []
    steady: list[float] = []  # gaps that end after every stream has been opened
    ttfts: list[float] = []
    errors: dict[str, int] = {}
    details: list[str] = []
    completed = 0

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def one(i: int) -> None:
        nonlocal completed
        await asyncio.sleep(ramp * i / n)
        try:
            client = await connect(spec["port"])
        except OSError as exc:
            error(f"connect: {type(exc).__name__}")
            return
        try:
            await asyncio.wait_for(client.send(raw, _sep(spec), record=True), spec.get("timeout", 120))
        except (HTTPError, asyncio.TimeoutError) as exc:
            error(str(exc)[:60] or type(exc).__name__)
            detail = getattr(exc, "detail", "")
            if detail and len(details) < 3:
                details.append(detail)
            return
        finally:
            if client.transport:
                client.transport.close()
        if client.contents != expected:
            error(f"short stream: {client.contents}/{expected} chunks")
            return
        completed += 1
        ttfts.append(client.first - client.sent)
        stamps = client.stamps
        gaps.extend(b - a for a, b in zip(stamps, stamps[1:]))
        steady.extend(b - a for a, b in zip(stamps, stamps[1:]) if b > t0 + ramp + 1.0)

    t0 = now()
    await asyncio.gather(*(one(i) for i in range(n)))
    return {"streams": n, "completed": completed, "errors": sum(errors.values()), "error_kinds": errors,
            "error_samples": details,
            "gap": summary_us(gaps), "gap_steady": summary_us(steady), "ttft": summary_us(ttfts), "seconds": now() - t0}


def main() -> None:
    spec = json.loads(sys.argv[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    mode = {"latency": latency, "throughput": throughput, "stream": stream, "many": many}[spec["mode"]]
    result = _run(mode(spec))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime  # the load generator's own CPU time
    print(json.dumps(result))


if __name__ == "__main__":
    main()
