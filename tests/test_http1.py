"""The chat path's HTTP/1.1 client against raw loopback servers that frame replies every legal way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings, strategies as st

from ollabridge.backends.http1 import Http1Pool, MalformedResponse, direct_http
from ollabridge.backends.ollama import OllamaBackend
from ollabridge.errors import BackendError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LINES = [b'{"message":{"role":"assistant","content":"Hi"},"done":false}\n',
         b'{"message":{"role":"assistant","content":" there"},"done":false}\n',
         b'{"message":{"role":"assistant","content":""},"done":true,"eval_count":2}\n']


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return head, await reader.readexactly(length)


class Server:
    """A loopback TCP server running `handler` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler, self.connections, self.requests = handler, 0, []

    async def __aenter__(self) -> str:
        async def serve(reader, writer):
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def collect(backend: OllamaBackend) -> list[dict]:
    return [chunk async for chunk in backend.stream("chat", {"model": "m", "messages": []})]


def keep_alive_server(body: bytes, head: bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                      splits: list[int] | None = None, requests: list | None = None) -> Handler:
    async def handler(reader, writer):
        while True:
            try:
                request = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            if requests is not None:
                requests.append(request)
            data, cuts = head + body, sorted(set(splits or []))
            for start, stop in zip([0, *cuts], [*cuts, len(data)]):
                writer.write(data[start:stop])
                await writer.drain()
                await asyncio.sleep(0)
    return handler


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=400), max_size=12),
       st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6))
def test_chunked_replies_split_anywhere_give_the_same_lines(cuts, chunk_sizes):
    """However the upstream chunks the body and however TCP splits it, the same objects arrive."""
    raw = b"".join(LINES)
    pieces, pos, i = [], 0, 0
    while pos < len(raw):
        size = chunk_sizes[i % len(chunk_sizes)]
        pieces.append(raw[pos:pos + size])
        pos, i = pos + size, i + 1

    async def run():
        async with Server(keep_alive_server(chunked(pieces), splits=cuts)) as url:
            backend = OllamaBackend("up", url)
            first = await collect(backend)
            second = await collect(backend)
            await backend.close()
        return first, second

    first, second = asyncio.run(run())
    assert [c["message"]["content"] for c in first] == ["Hi", " there", ""]
    assert first == second and first[-1]["eval_count"] == 2


async def test_keep_alive_reuses_one_connection_and_sends_a_proper_request():
    requests: list = []
    server = Server(keep_alive_server(chunked(LINES), requests=requests))
    async with server as url:
        backend = OllamaBackend("up", url + "/prefix/")
        for _ in range(5):
            assert len(await collect(backend)) == 3
        await backend.close()
    assert server.connections == 1
    head, body = requests[0]
    assert head.startswith(b"POST /prefix/api/chat HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{url.rsplit(':', 1)[1]}".encode() in head
    assert body == b'{"model":"m","messages":[]}'


async def test_content_length_and_close_delimited_bodies():
    body = b"".join(LINES).rstrip(b"\n")  # a non-streamed reply may lack the final newline
    length = Server(keep_alive_server(body, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)))
    async with length as url:
        backend = OllamaBackend("up", url)
        assert (await collect(backend))[-1]["done"] and (await collect(backend))[-1]["done"]
        await backend.close()
    assert length.connections == 1

    async def close_delimited(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + body)
        await writer.drain()

    closing = Server(close_delimited)
    async with closing as url:
        backend = OllamaBackend("up", url)
        assert (await collect(backend))[-1]["done"] and (await collect(backend))[-1]["done"]
        await backend.close()
    assert closing.connections == 2


async def test_a_kept_connection_the_upstream_closed_is_retried_on_a_new_one():
    async def one_request_per_connection_then_silent_close(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(LINES))
        await writer.drain()
        await reader.read(1)  # the next request arrives; close without answering

    server = Server(one_request_per_connection_then_silent_close)
    async with server as url:
        backend = OllamaBackend("up", url)
        for _ in range(3):
            assert len(await collect(backend)) == 3
        await backend.close()
    assert server.connections >= 3


async def test_stopping_early_closes_the_connection_so_the_upstream_sees_it():
    closed = asyncio.Event()

    async def endless(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(chunked([LINES[0]])[:-5])
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            closed.set()

    async with Server(endless) as url:
        backend = OllamaBackend("up", url)
        stream = backend.stream("chat", {"model": "m", "messages": []})
        assert (await anext(stream))["message"]["content"] == "Hi"
        await stream.aclose()
        await asyncio.wait_for(closed.wait(), 5)
        await backend.close()


@pytest.mark.parametrize("reply, message", [
    (b"garbage\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + LINES[0], "mid-body"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{}\n", "before it was done"),
])
async def test_broken_replies_become_backend_errors(reply, message):
    async def broken(reader, writer):
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    async with Server(broken) as url:
        backend = OllamaBackend("up", url)
        with pytest.raises(BackendError, match=message) as info:
            await collect(backend)
        assert info.value.status == 502
        await backend.close()


async def test_http_errors_keep_the_upstream_message_and_status():
    body = b'{"error":"model \\"m\\" not found, try pulling it first"}'
    head = b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body)
    async with Server(keep_alive_server(body, head)) as url:
        backend = OllamaBackend("up", url)
        with pytest.raises(BackendError, match="not found, try pulling") as info:
            await collect(backend)
        assert info.value.status == 404 and not info.value.retryable
        await backend.close()


async def test_silence_and_refusal_are_504_and_502():
    async def silent(reader, writer):
        await read_request(reader)
        await reader.read(1)

    async with Server(silent) as url:
        backend = OllamaBackend("up", url, first_token_timeout=0.2)
        with pytest.raises(BackendError, match="no answer within 0.2s") as info:
            await collect(backend)
        assert info.value.status == 504
        await backend.close()
    refused = OllamaBackend("gone", url)  # the server is closed now
    with pytest.raises(BackendError, match="unreachable") as info:
        await collect(refused)
    assert info.value.status == 502 and info.value.retryable
    await refused.close()


async def test_pool_refuses_https_and_proxied_urls_fall_back_to_httpx(monkeypatch):
    with pytest.raises(ValueError):
        Http1Pool("https://example.org")
    assert direct_http("http://127.0.0.1:11434")
    assert not direct_http("https://example.org")
    assert not direct_http("http://user:secret@ollama.example:11434")  # httpx sends the Basic auth
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert not direct_http("http://ollama.example:11434")
    assert direct_http("http://127.0.0.1:11434")


def test_protocol_error_is_a_connection_error():
    assert issubclass(MalformedResponse, ConnectionError)


async def test_the_httpx_path_gives_the_same_objects_and_errors():
    """https and proxied upstreams go through httpx: same chunks, same error mapping."""
    async with Server(keep_alive_server(chunked(LINES), splits=[7, 60, 61])) as url:
        lean, viahttpx = OllamaBackend("up", url), OllamaBackend("up", url)
        viahttpx._pool = None
        assert await collect(viahttpx) == await collect(lean)
        await lean.close()
        await viahttpx.close()

    async def silent(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked([LINES[0]])[:-5])
        await writer.drain()
        await reader.read(1)

    async with Server(silent) as url:
        backend = OllamaBackend("up", url, idle_timeout=0.2)
        backend._pool = None
        with pytest.raises(BackendError, match="sent nothing for 0.2s") as info:
            await collect(backend)
        assert info.value.status == 504
        await backend.close()


async def test_a_connect_timeout_is_unreachable_not_slow(monkeypatch):
    async def never(*args, **kwargs):
        await asyncio.Event().wait()

    backend = OllamaBackend("up", "http://127.0.0.1:9", connect_timeout=0.1)
    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", never)
    with pytest.raises(BackendError, match="unreachable.*within 0.1s") as info:
        await collect(backend)
    assert info.value.status == 502 and info.value.retryable
    await backend.close()
