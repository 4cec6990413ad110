"""Which backend serves a request: by model, priority, load and slots; retries and the queue."""

from __future__ import annotations

import asyncio

import pytest

from ollabridge.backends.base import Backend, BackendHealth
from ollabridge.errors import BackendError, ModelNotFound, NoBackend
from ollabridge.routing import Router

TIMEOUT = 5.0  # seconds: a request that should be served long before this failed, not hung


class Scripted(Backend):
    """A backend in memory: serves its models, or fails the way a test says.

    It tells a test what happened instead of making it poll: `starts` (a queue, maybe shared by
    several backends) gets the backend's name when a chat starts on it; `refused` is set once the
    router found it full.
    """

    def __init__(self, name, models, *, priority=10, slots=None, fail_before=False, fail_after=False,
                 gate: asyncio.Event | None = None, starts: asyncio.Queue | None = None):
        super().__init__(name, slots)
        self.priority = priority
        self.model_names = models
        self.fail_before, self.fail_after, self.gate, self.starts = fail_before, fail_after, gate, starts
        self.served = 0
        self.refused = asyncio.Event()

    @property
    def available(self):
        free = super().available
        if not free:
            self.refused.set()
        return free

    async def stream(self, op, body):
        self.served += 1
        if self.starts is not None:
            self.starts.put_nowait(self.name)
        if self.fail_before:
            raise BackendError(f"{self.name} died", retryable=True, backend=self.name)
        if self.gate is not None:
            await self.gate.wait()
        yield {"model": body["model"], "message": {"role": "assistant", "content": self.name}, "done": False}
        if self.fail_after:
            raise BackendError(f"{self.name} died mid-stream", retryable=True, backend=self.name)
        yield {"model": body["model"], "message": {"role": "assistant", "content": ""}, "done": True,
               "eval_count": 1}

    async def call(self, op, body):
        return {"op": op, "by": self.name}

    async def fetch_models(self):
        return [{"name": n, "model": n} for n in self.model_names]

    async def health(self):
        return BackendHealth(True)


async def _reply(router, model="a"):
    served = {}
    async with asyncio.timeout(TIMEOUT):
        chunks = [c async for c in router.chat({"model": model, "messages": []}, served)]
    return chunks[0]["message"]["content"], served


async def _started(starts, n):
    """The names of the next `n` backends to start a chat, in order."""
    return [await asyncio.wait_for(starts.get(), TIMEOUT) for _ in range(n)]


async def test_only_backends_listing_the_model_serve_it():
    router = Router()
    for b in (Scripted("one", ["a"]), Scripted("two", ["b"])):
        router.add(b)
    assert (await _reply(router, "a"))[0] == "one"
    assert (await _reply(router, "b"))[0] == "two"
    served = (await _reply(router, "b"))[1]
    assert (served["backend"], served["kind"]) == ("two", "ollama") and served["done"]["done"] is True


async def test_unknown_model_names_what_is_available():
    router = Router()
    router.add(Scripted("one", ["a", "c"]))
    with pytest.raises(ModelNotFound) as err:
        await _reply(router, "zzz")
    assert "a, c" in err.value.message and err.value.status == 404


async def test_bare_name_means_latest():
    router = Router()
    router.add(Scripted("one", ["llama3:latest"]))
    assert (await _reply(router, "llama3"))[0] == "one"


async def test_gpu_node_priority_then_least_in_flight():
    gate, starts = asyncio.Event(), asyncio.Queue()
    cpu, gpu1, gpu2 = Scripted("cpu", ["a"], starts=starts), \
        Scripted("gpu1", ["a"], priority=0, gate=gate, starts=starts), \
        Scripted("gpu2", ["a"], priority=0, gate=gate, starts=starts)
    router = Router()
    for b in (cpu, gpu1, gpu2):
        router.add(b)
    first = asyncio.create_task(_reply(router))
    second = asyncio.create_task(_reply(router))
    assert sorted(await _started(starts, 2)) == ["gpu1", "gpu2"]
    assert (gpu1.stats.in_flight, gpu2.stats.in_flight, cpu.stats.in_flight) == (1, 1, 0)
    gate.set()
    assert {(await first)[0], (await second)[0]} == {"gpu1", "gpu2"}
    assert cpu.served == 0


async def test_failure_before_first_chunk_is_retried_elsewhere():
    router = Router()
    bad, good = Scripted("bad", ["a"], priority=0, fail_before=True), Scripted("good", ["a"])
    router.add(bad)
    router.add(good)
    assert (await _reply(router))[0] == "good"
    assert bad.stats.failed == 1 and bad.stats.in_flight == 0


async def test_failure_after_first_chunk_reaches_the_caller_when_resume_is_off():
    router = Router(resume=False)
    router.add(Scripted("flaky", ["a"], priority=0, fail_after=True))
    router.add(Scripted("good", ["a"]))
    seen = []
    with pytest.raises(BackendError):
        async with asyncio.timeout(TIMEOUT):
            async for chunk in router.chat({"model": "a"}):
                seen.append(chunk)
    assert len(seen) == 1  # never silently re-sent from the start elsewhere (resuming: tests/test_resume.py)


async def test_full_slots_wait_in_queue_then_serve():
    gate, starts = asyncio.Event(), asyncio.Queue()
    node = Scripted("node", ["a"], slots=1, gate=gate, starts=starts)
    router = Router(queue_timeout=30)
    router.add(node)
    first = asyncio.create_task(_reply(router))
    assert await _started(starts, 1) == ["node"]
    second = asyncio.create_task(_reply(router))
    await asyncio.wait_for(node.refused.wait(), TIMEOUT)
    assert (router.waiting, node.stats.in_flight, node.served) == (1, 1, 1)
    gate.set()
    assert [(await first)[0], (await second)[0]] == ["node", "node"]
    assert (router.waiting, node.stats.in_flight, node.served) == (0, 0, 2)


async def test_queue_full_or_wait_too_long_answers_503_with_retry_after():
    gate, starts = asyncio.Event(), asyncio.Queue()
    node = Scripted("node", ["a"], slots=1, gate=gate, starts=starts)
    router = Router(max_queue=1, queue_timeout=0.2)
    router.add(node)
    holder = asyncio.create_task(_reply(router))
    assert await _started(starts, 1) == ["node"]
    waiter = asyncio.create_task(_reply(router))
    await asyncio.wait_for(node.refused.wait(), TIMEOUT)
    assert router.waiting == 1
    with pytest.raises(NoBackend) as full:
        await _reply(router)
    assert full.value.status == 503 and full.value.headers["Retry-After"]
    assert "the queue is full" in full.value.message
    with pytest.raises(NoBackend) as late:
        await waiter  # waited past queue_timeout
    assert late.value.status == 503 and "stayed busy for 0.2s" in late.value.message
    gate.set()
    assert (await holder)[0] == "node"
    assert (router.waiting, node.served) == (0, 1)


async def test_no_backend_up_is_503_not_404():
    class Down(Scripted):
        async def fetch_models(self):
            raise OSError("down")

    router = Router()
    router.add(Down("ollama", []))
    with pytest.raises(NoBackend) as err:
        await _reply(router)
    assert err.value.status == 503


async def test_default_model_falls_back_to_first_served():
    router = Router(default_model="qwen2.5:1.5b")
    router.add(Scripted("one", ["gemma3:270m"]))
    assert await router.resolve_model(None) == "gemma3:270m"
    assert await router.resolve_model("x") == "x"
