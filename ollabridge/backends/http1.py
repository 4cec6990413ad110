"""A pooled HTTP/1.1 client for one plain-http Ollama: the `/api/chat` hot path of the gateway
and of the node agent (stdlib and httpx only, so the agent can import it).

httpx serves everything else (https, proxies, the occasional JSON call). On the chat path it cost
more CPU than the rest of the gateway together (docs/benchmarks.md): its pool rescans every
connection on each request and each close, O(n²) at 32 clients, and a streamed line climbs ~10
generator layers. An Ollama server's reply needs little of HTTP: one request per connection at a
time; a Content-Length, chunked or read-to-close body; keep-alive. That is all this does, on an
`asyncio.Protocol` whose buffer is decoded in place, so one socket read yields every line it holds.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import deque
from urllib.parse import urlsplit

import httpx

__all__ = ["Http1Pool", "Http1Response", "HttpxReply", "Lines", "MalformedResponse", "direct_http",
           "post_stream"]

_HIGH_WATER = 64 * 1024  # stop reading the socket past this much unread body: a slow reader holds back the upstream
_MAX_HEAD = 64 * 1024
_MAX_LINE = 4096


class MalformedResponse(ConnectionError):
    """The upstream's reply is not HTTP/1.1 we can read."""


class _Conn(asyncio.Protocol):
    """One TCP connection: a receive buffer and one waiter."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > _HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def more(self, timeout: float) -> None:
        """Wait for more bytes or the end of the connection; TimeoutError after `timeout` s."""
        if self._paused:
            self._paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def reusable(self) -> bool:
        return not self.eof and not self.buf and self.transport is not None \
            and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER = range(4)


class Http1Response:
    """A reply being read: `status`, then `read()` until it returns b"", then `release()`."""

    def __init__(self, pool: Http1Pool, conn: _Conn, status: int, headers: dict[bytes, bytes],
                 keep_alive: bool) -> None:
        self.status = status
        self.headers = headers
        self._pool, self._conn = pool, conn
        self._keep_alive = keep_alive
        self._finished = False
        self._chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        length = headers.get(b"content-length")
        try:
            self._left = -1 if self._chunked or length is None else int(length)
        except ValueError:
            raise MalformedResponse(f"bad Content-Length {length!r}") from None
        self._state = _CHUNK_SIZE
        if self._left == 0:
            self._finished = True

    @property
    def finished(self) -> bool:
        return self._finished

    async def read(self, timeout: float) -> bytes:
        """Every body byte that has arrived (waiting up to `timeout` s for some); b"" at the end."""
        conn = self._conn
        while True:
            data = self._take()
            if data or self._finished:
                return data
            if conn.eof:
                if self._left < 0 and not self._chunked:
                    self._finished = True  # a body delimited by the end of the connection
                    self._keep_alive = False
                    return b""
                raise MalformedResponse("the upstream closed the connection mid-body")
            await conn.more(timeout)

    async def read_all(self, timeout: float) -> bytes:
        parts = []
        while piece := await self.read(timeout):
            parts.append(piece)
        return b"".join(parts)

    def release(self) -> None:
        """Give the connection back for reuse if the body was read to its end, else close it."""
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is None:
            return
        if self._finished and self._keep_alive:
            self._pool._put(conn)
        else:
            conn.close()

    def _take(self) -> bytes:
        buf = self._conn.buf
        if not buf:
            return b""
        if not self._chunked:
            if self._left < 0:
                data = bytes(buf)
                buf.clear()
                return data
            data = bytes(buf[:self._left])
            del buf[:self._left]
            self._left -= len(data)
            self._finished = self._left == 0
            return data
        return self._take_chunked(buf)

    def _take_chunked(self, buf: bytearray) -> bytes:
        out = []
        pos, end = 0, len(buf)
        state, left = self._state, self._left
        while pos < end:
            if state == _CHUNK_DATA:
                n = min(left, end - pos)
                out.append(buf[pos:pos + n])
                pos += n
                left -= n
                if left == 0:
                    state = _CHUNK_CRLF
                continue
            if state == _CHUNK_CRLF:
                if end - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise MalformedResponse("chunk not followed by CRLF")
                pos += 2
                state = _CHUNK_SIZE
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if end - pos > _MAX_LINE:
                    raise MalformedResponse("chunk size line too long")
                break
            line = bytes(buf[pos:eol])
            pos = eol + 2
            if state == _TRAILER:
                if not line:
                    self._finished = True
                    break
                continue
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise MalformedResponse(f"bad chunk size {line[:40]!r}") from None
            if size == 0:
                state = _TRAILER
            else:
                state, left = _CHUNK_DATA, size
        del buf[:pos]
        self._state, self._left = state, left
        return b"".join(out)


class Http1Pool:
    """Keep-alive connections to one `http://host:port`, most recently used first."""

    def __init__(self, base_url: str, *, connect_timeout: float = 5.0, max_idle: int = 256,
                 idle_expiry: float = 30.0, user_agent: str = "ollabridge",
                 headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError(f"Http1Pool serves plain http:// only, not {base_url!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle_expiry = idle_expiry
        self._host_header = parts.netloc.rsplit("@", 1)[-1]
        self._agent = user_agent
        # Sent with every request (a replica's credential for another replica's internal endpoint).
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._idle: deque[_Conn] = deque()

    async def request(self, method: str, path: str, body: bytes, *, timeout: float,
                      content_type: str = "application/json", headers: dict[str, str] | None = None
                      ) -> Http1Response:
        """Send a request and wait up to `timeout` s for the reply's head.

        A kept-alive connection the upstream had closed is retried once on a new one.
        Raises OSError (ConnectionError, MalformedResponse) or TimeoutError.
        """
        extra = self._extra + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else self._extra
        head = (f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {self._host_header}\r\n"
                f"User-Agent: {self._agent}\r\n{extra}Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        while True:
            conn, reused = self._take(), True
            if conn is None:
                conn, reused = await self._connect(), False
            try:
                conn.transport.write(head + body)  # type: ignore[union-attr]
                return await self._read_head(conn, timeout)
            except MalformedResponse:
                conn.close()
                raise
            except ConnectionError:
                conn.close()
                if reused and not conn.buf:
                    continue  # closed while idle: nothing was answered, ask again on a new one
                raise
            except BaseException:
                conn.close()
                raise

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(_Conn, self.host, self.port)
        except TimeoutError:  # unreachable, not slow: told apart from a late answer (a 502, not a 504)
            raise ConnectionError(f"no connection to {self.host}:{self.port} within "
                                  f"{self.connect_timeout:g}s") from None
        return conn

    def _take(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable() and now - conn.idle_since < self.idle_expiry:
                return conn
            conn.close()
        return None

    def _put(self, conn: _Conn) -> None:
        if not conn.reusable():
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        while len(self._idle) > self.max_idle:
            self._idle.popleft().close()

    async def _read_head(self, conn: _Conn, timeout: float) -> Http1Response:
        deadline = time.monotonic() + timeout
        while (end := conn.buf.find(b"\r\n\r\n")) < 0:
            if len(conn.buf) > _MAX_HEAD:
                raise MalformedResponse("response head too large")
            if conn.eof:
                raise ConnectionResetError("the upstream closed the connection before answering")
            await conn.more(max(0.0, deadline - time.monotonic()))
        raw = bytes(conn.buf[:end])
        del conn.buf[:end + 4]
        lines = raw.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise MalformedResponse(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(parts[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise MalformedResponse(f"bad header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        keep_alive = parts[0] == b"HTTP/1.1" and b"close" not in headers.get(b"connection", b"").lower()
        if 100 <= status < 200:
            raise MalformedResponse(f"unexpected informational status {status}")
        return Http1Response(self, conn, status, headers, keep_alive)


# -- one interface over both clients ------------------------------------------------------------

def direct_http(url: str) -> bool:
    """True when `url` is plain http without credentials in it and no proxy from the environment
    applies (httpx would use it): the cases the lean pool serves exactly as httpx would."""
    parts = urlsplit(url)
    if parts.scheme != "http" or "@" in parts.netloc:
        return False
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get("http") or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass_environment(parts.hostname or "", proxies))


class HttpxReply:
    """An httpx streaming response behind the calls of `Http1Response`."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self._response = response
        self._pieces = response.aiter_bytes()
        self.finished = False

    async def read(self, timeout: float) -> bytes:
        async with asyncio.timeout(timeout):
            piece = await anext(self._pieces, b"")
        self.finished = not piece
        return piece

    async def read_all(self, timeout: float) -> bytes:
        async with asyncio.timeout(timeout):
            return await self._response.aread()

    async def aclose(self) -> None:
        await self._response.aclose()


Reply = Http1Response | HttpxReply
READ_ERRORS = (OSError, httpx.HTTPError)  # what reading a reply raises, besides TimeoutError


async def post_stream(pool: Http1Pool | None, client: httpx.AsyncClient, path: str, payload: bytes,
                      timeout: float, headers: dict[str, str] | None = None) -> Reply:
    """POST JSON `payload` (with `headers` besides the pool's) and wait up to `timeout` s for the
    reply's head: on `pool` when given."""
    if pool is not None:
        return await pool.request("POST", path, payload, timeout=timeout, headers=headers)
    request = client.build_request("POST", path, content=payload,
                                   headers={"Content-Type": "application/json", **(headers or {})})
    async with asyncio.timeout(timeout):
        return HttpxReply(await client.send(request, stream=True))


async def close(reply: Reply) -> None:
    """Give the connection back (body read to its end) or close it."""
    if isinstance(reply, HttpxReply):
        await reply.aclose()
    else:
        reply.release()


class Lines:
    """The non-empty lines of an NDJSON reply, as an async iterator (a class, not a generator, so
    stopping early leaves nothing to finalize). One timeout per network read: `first_timeout`
    until the first line, then `idle_timeout`; `timeout` is the one in force."""

    def __init__(self, reply: Reply, first_timeout: float, idle_timeout: float) -> None:
        self.reply = reply
        self.timeout = first_timeout
        self._idle = idle_timeout
        self._ready: deque[bytes] = deque()
        self._pending = b""
        self._ended = False

    def __aiter__(self) -> Lines:
        return self

    async def __anext__(self) -> bytes:
        while not self._ready:
            if self._ended:
                raise StopAsyncIteration
            piece = await self.reply.read(self.timeout)
            if not piece:
                self._ended, piece = True, b"\n"  # the last line may lack its newline (stream: false)
            parts = (self._pending + piece).split(b"\n")
            self._pending = parts.pop()
            self._ready.extend(line for line in parts if line.strip())
        self.timeout = self._idle
        return self._ready.popleft()


async def drain(reply: Reply, timeout: float = 1.0) -> None:
    """Read a finished reply to its end, so its connection can serve the next request."""
    try:
        while not reply.finished and await reply.read(timeout):
            pass
    except (TimeoutError, *READ_ERRORS):
        pass  # the connection is closed instead; nothing the caller needs to know
