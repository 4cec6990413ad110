"""Which backend serves a request: by model, priority, load and slots; retries and the queue."""

from __future__ import annotations

import asyncio

import pytest

from ollabridge.backends.base import Backend, BackendHealth, Speed
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
                 gate: asyncio.Event | None = None, starts: asyncio.Queue | None = None,
                 lists: asyncio.Event | None = None):
        super().__init__(name, slots)
        self.priority = priority
        self.model_names = models
        self.fail_before, self.fail_after, self.gate, self.starts = fail_before, fail_after, gate, starts
        self.served = 0
        self.order: list = []  # the "n" of each chat body, in the order the chats started
        self.refused = asyncio.Event()
        self.lists = lists  # when given, a model-list fetch answers only once it is set (never: a black hole)
        self.fetches = self.fetching_now = self.most_fetching = 0

    @property
    def available(self):
        free = super().available
        if not free:
            self.refused.set()
        return free

    async def stream(self, op, body):
        self.served += 1
        self.order.append(body.get("n"))
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
        self.fetches += 1
        self.fetching_now += 1
        self.most_fetching = max(self.most_fetching, self.fetching_now)
        try:
            if self.lists is not None:
                await self.lists.wait()
            return [{"name": n, "model": n} for n in self.model_names]
        finally:
            self.fetching_now -= 1

    async def health(self):
        return BackendHealth(True)


async def _reply(router, model="a", n=None):
    served = {}
    async with asyncio.timeout(TIMEOUT):
        chunks = [c async for c in router.chat({"model": model, "messages": [], "n": n}, served)]
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


async def _line(waiting):
    """A one-slot backend held by a request ("holder", until `gate` is set) and `waiting` requests
    (n = 0, 1, ...) in its queue, each queued before the next arrives."""
    gate, starts = asyncio.Event(), asyncio.Queue()
    node = Scripted("node", ["a"], slots=1, gate=gate, starts=starts)
    router = Router(queue_timeout=30)
    router.add(node)
    holder = asyncio.create_task(_reply(router, n="holder"))
    assert await _started(starts, 1) == ["node"]
    waiters = []
    for n in range(waiting):
        node.refused.clear()
        waiters.append(asyncio.create_task(_reply(router, n=n)))
        await asyncio.wait_for(node.refused.wait(), TIMEOUT)
        assert router.waiting == n + 1
    return router, node, gate, holder, waiters


async def test_queue_is_first_come_first_served_and_a_newcomer_waits_its_turn():
    router, node, gate, holder, waiters = await _line(4)
    waiters[1].cancel()  # a client that gave up leaves the line without holding anyone up
    with pytest.raises(asyncio.CancelledError):
        await waiters[1]
    assert router.waiting == 3
    gate.set()  # the slot frees: the holder ends, and a newcomer arrives at that very moment
    newcomer = asyncio.create_task(_reply(router, n="newcomer"))
    await asyncio.gather(holder, newcomer, waiters[0], *waiters[2:])
    assert node.order == ["holder", 0, 2, 3, "newcomer"]
    assert (router.waiting, node.stats.in_flight) == (0, 0)


async def test_a_black_holed_backend_stalls_no_request_for_a_model_served_elsewhere():
    """Every list is stale on every request (TTL 0): the healthy backend's model is served at once
    while the black hole's one fetch never ends, and no backend is fetched twice at a time."""
    hole = Scripted("hole", ["h"], lists=asyncio.Event())
    good = Scripted("good", ["a"])
    router = Router(models_ttl=0)
    router.add(hole)
    router.add(good)
    replies = [await _reply(router) for _ in range(20)]  # _reply fails after TIMEOUT: a stall fails
    assert {name for name, _ in replies} == {"good"}
    assert hole.fetches == 1 and hole.most_fetching == 1 and good.most_fetching == 1
    await asyncio.gather(*(good.models(0) for _ in range(3)), good.models(60))  # forced ones wait their turn
    assert good.most_fetching == 1
    await router.close()


async def test_an_unknown_model_does_not_force_a_fetch_from_every_backend():
    one, two = Scripted("one", ["a"]), Scripted("two", ["b"])
    router = Router(models_ttl=60)
    router.add(one)
    router.add(two)
    assert (await _reply(router, "b"))[0] == "two"
    for _ in range(10):
        with pytest.raises(ModelNotFound) as err:
            await _reply(router, "zzz")
        assert "a, b" in err.value.message
    assert (one.fetches, two.fetches) == (1, 1)  # the first fetch only; TTL not reached
    await router.refresh(force=True)  # something changed (a pull): every list is fetched anew
    assert (one.fetches, two.fetches) == (2, 2)


async def test_requests_wait_for_a_backend_that_is_starting_instead_of_failing():
    """The in-box engine at boot: in the router, listing nothing until it answers. Requests for its
    model, and those naming none, wait for it; past the timeout they get 503, never a 404."""
    class Engine(Scripted):
        answering = False

        async def fetch_models(self):
            if not self.answering:
                raise OSError("connection refused")
            return await super().fetch_models()

    engine = Engine("inbox", ["gemma3:270m"])
    router = Router(default_model="qwen2.5:1.5b")
    router.starting(engine, timeout=TIMEOUT)
    router.add(engine)

    async def unnamed_request():  # as the API does: the model resolved first, then served
        model = await router.resolve_model(None)
        return model, (await _reply(router, model))[0]

    named = asyncio.create_task(_reply(router, "gemma3:270m"))
    unnamed = asyncio.create_task(unnamed_request())
    await engine.models(0)  # its first fetch fails: not answering yet
    assert not engine.reachable and not named.done() and not unnamed.done()
    engine.answering = True  # it answers; the gateway fetches its list, then tells the router
    await engine.models(0)
    assert not named.done() and not unnamed.done()  # a starting backend serves nothing until then
    router.started(engine)
    assert (await named)[0] == "inbox" and await unnamed == ("gemma3:270m", "inbox")

    late = Scripted("late", ["b"])
    router.starting(late, timeout=0.05)
    router.add(late)
    with pytest.raises(NoBackend) as err:
        await _reply(router, "b")
    assert err.value.status == 503 and "late is still starting" in err.value.message
    assert (await _reply(router, "gemma3:270m"))[0] == "inbox"  # a model served elsewhere does not wait
    router.started(late)
    assert (await _reply(router, "b"))[0] == "late"


async def test_a_waiter_giving_up_as_its_slot_frees_leaves_the_slot_to_the_next():
    router, node, gate, holder, waiters = await _line(2)
    gate.set()  # the holder ends on the next turn of the loop, when the first waiter has just given up
    waiters[0].cancel()
    assert (await holder)[0] == "node" and (await waiters[1])[0] == "node"
    assert waiters[0].cancelled() and node.order == ["holder", 1]
    assert (router.waiting, node.stats.in_flight) == (0, 0)


class Thinkless(Scripted):
    """Answers as Ollama does for a model without the thinking capability: 400 when asked to think."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bodies: list[dict] = []

    async def stream(self, op, body):
        self.bodies.append(body)
        if body.get("think"):
            raise BackendError('"a" does not support thinking', status=400, backend=self.name)
        async for chunk in super().stream(op, body):
            yield chunk


async def test_a_think_the_model_cannot_honour_is_dropped_once_then_never_sent():
    router = Router()
    backend = Thinkless("one", ["a"])
    router.add(backend)
    for _ in range(2):
        chunks = [c async for c in router.chat({"model": "a", "messages": [], "think": "high"}, relax_think=True)]
        assert chunks[-1]["done"] and chunks[0]["message"]["content"] == "one"
    # The first request learned it (a refused try, then without `think`); the second went without at once.
    assert [b.get("think") for b in backend.bodies] == ["high", None, None]
    with pytest.raises(BackendError, match="does not support thinking"):  # the native API passes it as sent
        [c async for c in router.chat({"model": "a", "messages": [], "think": True})]


async def test_a_caller_with_one_request_waits_behind_none_of_another_callers_twenty():
    """Fairness (issue 14): a 1-slot node, caller A queues 20, then B sends 1: B starts right after
    the request running, not after all twenty."""
    gate, starts = asyncio.Event(), asyncio.Queue()
    node = Scripted("node", ["a"], slots=1, gate=gate, starts=starts)
    router = Router(queue_timeout=30)
    router.add(node)

    async def ask(caller, n):
        served = {"caller": caller}
        async with asyncio.timeout(TIMEOUT):
            return [c async for c in router.chat({"model": "a", "messages": [], "n": n}, served)]
    holder = asyncio.create_task(ask("key:A", "A-holder"))
    await _started(starts, 1)
    tasks = []
    for n in [f"A{i}" for i in range(20)] + ["B"]:
        node.refused.clear()
        tasks.append(asyncio.create_task(ask("key:B" if n == "B" else "key:A", n)))
        await asyncio.wait_for(node.refused.wait(), TIMEOUT)
    assert router.waiting == 21
    gate.set()
    await asyncio.gather(holder, *tasks)
    assert node.order == ["A-holder", "B"] + [f"A{i}" for i in range(20)]


async def test_a_weighted_caller_gets_its_weight_in_turns():
    gate, starts = asyncio.Event(), asyncio.Queue()
    node = Scripted("node", ["a"], slots=1, gate=gate, starts=starts)
    router = Router(queue_timeout=30)
    router.add(node)

    async def ask(caller, weight, n):
        async with asyncio.timeout(TIMEOUT):
            return [c async for c in router.chat({"model": "a", "messages": [], "n": n},
                                                 {"caller": caller, "weight": weight})]
    holder = asyncio.create_task(ask("x", 1, "holder"))
    await _started(starts, 1)
    tasks = []
    for caller, weight, n in [("a", 1, "a0"), ("a", 1, "a1"), ("a", 1, "a2"),
                              ("b", 2, "b0"), ("b", 2, "b1"), ("b", 2, "b2"), ("b", 2, "b3")]:
        node.refused.clear()
        tasks.append(asyncio.create_task(ask(caller, weight, n)))
        await asyncio.wait_for(node.refused.wait(), TIMEOUT)
    gate.set()
    await asyncio.gather(holder, *tasks)
    # start tags: a 0, 1, 2; b 0, 0.5, 1, 1.5 (ties in arrival order)
    assert node.order == ["holder", "a0", "b0", "b1", "a1", "b2", "b3", "a2"]


class Timed(Scripted):
    """Its final chunk says how long the tokens took, as Ollama's does."""

    async def stream(self, op, body):
        async for chunk in super().stream(op, body):
            yield {**chunk, "eval_count": 20, "eval_duration": 2_000_000_000} if chunk["done"] else chunk


async def _gpu_and_cpu():
    gpu, cpu = Scripted("gpu", ["a"], priority=0, slots=2), Scripted("cpu", ["a"], priority=10)
    router = Router()
    router.add(gpu)
    router.add(cpu)
    return router, gpu, cpu


async def test_the_free_backend_measured_to_finish_soonest_serves_gpu_first_unless_slower():
    router, gpu, cpu = await _gpu_and_cpu()
    gpu.measured("a", 0.2, 40.0)  # the only one measured: the CPU counts as fast, the GPU's priority decides
    assert (await _reply(router))[0] == "gpu"
    gpu.stats.speeds["a"] = Speed(0.2, 36.0, 1)  # a little slower than the CPU, within the tolerance
    cpu.stats.speeds["a"] = Speed(0.2, 38.0, 1)
    assert (await _reply(router))[0] == "gpu"
    gpu.stats.speeds["a"] = Speed(0.2, 5.0, 1)  # measurably slower: the CPU finishes first
    assert (await _reply(router))[0] == "cpu"


async def test_the_estimate_uses_the_tokens_the_request_asks_for():
    router, gpu, cpu = await _gpu_and_cpu()

    async def by(num_predict):
        gpu.stats.speeds.clear(), cpu.stats.speeds.clear()  # as measured before each (the replies add theirs)
        gpu.measured("a", 0.1, 10.0)  # answers at once, streams slowly
        cpu.measured("a", 3.0, 1000.0)  # long to start, then fast
        chunks = [c async for c in router.chat({"model": "a", "messages": [], "options": {"num_predict": num_predict}})]
        return chunks[0]["message"]["content"]
    assert [await by(1), await by(1000)] == ["gpu", "cpu"]


async def test_a_finished_stream_updates_its_backends_moving_averages_shown_in_describe():
    node = Timed("node", ["a"])
    router = Router()
    router.add(node)
    await _reply(router)
    speed = node.stats.speeds["a"]
    assert (speed.samples, speed.tokens_per_s) == (1, 10.0) and speed.ttft_s >= 0
    node.stats.speeds["a"].tokens_per_s = 20.0
    await _reply(router)
    assert node.stats.speeds["a"].tokens_per_s == pytest.approx(20.0 + 0.3 * (10.0 - 20.0))
    assert node.describe()["speed"]["a"]["samples"] == 2 and "b" not in node.describe()["speed"]


async def test_the_fair_queue_remembers_a_bounded_number_of_callers():
    router, node, gate, holder, waiters = await _line(1)
    slots = router.slots
    slots._now = 10.0
    slots._ends = {f"ip:{i}": 5.0 for i in range(5000)}  # callers whose turns passed long ago
    slots._start("ip:new", 1.0)
    assert slots._ends == {"ip:new": 11.0}
    gate.set()
    await asyncio.gather(holder, *waiters)
