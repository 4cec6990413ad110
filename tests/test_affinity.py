"""Conversation affinity, in process: a request whose leading messages match a recent one's goes to the
backend that served it, unless that one is full or much slower (ollabridge/routing/affinity.py and
its place in slots.py). The same through real processes: tests/test_affinity_e2e.py."""

from __future__ import annotations

import asyncio

from ollabridge.backends.base import Speed
from ollabridge.routing import Router
from ollabridge.routing.affinity import MIN_CHARS, Affinity, conversation
from tests.test_router import TIMEOUT, Scripted, _started

SYSTEM_A = "You are a careful assistant for conversation A. " * 20  # ~1,000 characters: past MIN_CHARS
SYSTEM_B = "You answer in verse, for conversation B. " * 25


def turn(system: str, *said: str) -> list[dict]:
    """A conversation's messages: the system prompt, then user and assistant turns alternating."""
    roles = ("user", "assistant")
    return [{"role": "system", "content": system}] + [{"role": roles[i % 2], "content": s} for i, s in enumerate(said)]


async def ask(router: Router, messages: list[dict], model: str = "a") -> str:
    """The name of the backend that answered (Scripted answers with its name)."""
    async with asyncio.timeout(TIMEOUT):
        chunks = [c async for c in router.chat({"model": model, "messages": messages})]
    return chunks[0]["message"]["content"]


def node(name: str, **kw) -> Scripted:
    """A scripted backend whose speed is what a test sets (its microsecond replies would measure noise)."""
    backend = Scripted(name, ["a"], **kw)
    backend.measured = lambda *_: None
    return backend


def two(**kw) -> tuple[Router, Scripted, Scripted]:
    router = Router(**kw)
    x, y = node("x"), node("y")
    router.add(x)
    router.add(y)
    return router, x, y


async def test_later_turns_go_to_the_backend_that_served_the_conversation():
    router, _, _ = two()
    first_a = await ask(router, turn(SYSTEM_A, "hello"))
    first_b = await ask(router, turn(SYSTEM_B, "hello"))
    assert {first_a, first_b} == {"x", "y"}  # new conversations spread: their caches do not evict each other
    for n in range(3):
        assert await ask(router, turn(SYSTEM_A, "hello", "hi", f"and {n}?")) == first_a
        assert await ask(router, turn(SYSTEM_B, "hello", "hi", f"and {n}?")) == first_b
    stats = router.stream_stats()
    assert (stats["affinity_hits"], stats["affinity_misses"], stats["affinity_yielded"]) == (6, 2, 0)


async def test_without_affinity_every_turn_takes_the_normal_choice():
    router, _, _ = two(affinity=False)
    assert [await ask(router, turn(s, "hello")) for s in (SYSTEM_A, SYSTEM_B, SYSTEM_A)] == ["x", "x", "x"]
    assert router.stream_stats()["affinity_hits"] == 0


async def test_the_home_wins_over_a_backend_the_normal_choice_prefers():
    gate, starts = asyncio.Event(), asyncio.Queue()
    router = Router()
    x, y = node("x", gate=gate, starts=starts), node("y")
    router.add(x)
    router.add(y)
    held = asyncio.create_task(ask(router, []))  # x busy with a request of no conversation
    assert await _started(starts, 1) == ["x"]
    assert await ask(router, turn(SYSTEM_A, "hello")) == "y"
    gate.set()
    await held
    # Both free and equal now; the normal choice would take x (first, never given a conversation).
    assert await ask(router, []) == "x"
    assert await ask(router, turn(SYSTEM_A, "hello", "hi", "more")) == "y"
    assert await ask(router, turn(SYSTEM_A, "hello", "a different second turn")) == "y"  # the system prompt matches


async def test_a_full_home_is_not_waited_for():
    starts = asyncio.Queue()
    router = Router()
    x, y = node("x", slots=1), node("y", slots=1)
    router.add(x)
    router.add(y)
    assert await ask(router, turn(SYSTEM_A, "hello")) == "x"
    x.gate, x.starts = asyncio.Event(), starts  # x now holds its next request until told
    busy = asyncio.create_task(ask(router, turn(SYSTEM_A, "hello", "hi", "second")))
    assert await _started(starts, 1) == ["x"]  # its home, free then
    assert await ask(router, turn(SYSTEM_A, "hello", "hi", "third")) == "y"  # x full: yielded to load
    x.gate.set()
    assert await busy == "x"
    stats = router.stream_stats()
    assert (stats["affinity_hits"], stats["affinity_yielded"]) == (1, 1)


async def test_a_queued_request_takes_the_first_free_slot_not_its_home():
    gates, starts = {"x": asyncio.Event(), "y": asyncio.Event()}, asyncio.Queue()
    router = Router()
    x, y = node("x", slots=1, starts=starts), node("y", slots=1, starts=starts)
    router.add(x)
    router.add(y)
    assert await ask(router, turn(SYSTEM_A, "hello")) == "x"
    await _started(starts, 1)
    x.gate, y.gate = gates["x"], gates["y"]
    busy = [asyncio.create_task(ask(router, [])) for _ in range(2)]
    assert sorted(await _started(starts, 2)) == ["x", "y"]
    queued = asyncio.create_task(ask(router, turn(SYSTEM_A, "hello", "hi", "more")))
    while router.waiting == 0:
        await asyncio.sleep(0)
    gates["y"].set()  # y frees first: the waiter takes it rather than wait for its home
    assert await queued == "y"
    gates["x"].set()
    await asyncio.gather(*busy)


async def test_a_much_slower_home_yields_a_little_slower_one_keeps_it():
    router, x, y = two()
    assert await ask(router, turn(SYSTEM_A, "hello")) == "x"
    x.stats.speeds["a"], y.stats.speeds["a"] = Speed(0.5, 28.0, 3), Speed(0.5, 40.0, 3)
    # 256 tokens: x generates in ~9.1 s, y finishes in ~6.9 s: within the bound (1.5 x), past the choice's 15 %.
    assert await ask(router, turn(SYSTEM_A, "hello", "hi", "more")) == "x"
    x.stats.speeds["a"] = Speed(12.0, 40.0, 3)  # its first tokens were slow: whole prompts, which the cache saves
    assert await ask(router, turn(SYSTEM_A, "hello", "hi", "more", "ok")) == "x"
    x.stats.speeds["a"] = Speed(0.5, 12.0, 2)  # ~21 s: three times as long, but measured on 2 answers: noise
    assert await ask(router, turn(SYSTEM_A, "hello", "hi", "more", "ok", "again")) == "x"
    x.stats.speeds["a"] = Speed(0.5, 12.0, 3)  # measured on 3: it is slower
    assert await ask(router, turn(SYSTEM_A, "hello", "hi", "more", "ok", "again", "and")) == "y"
    assert router.stream_stats()["affinity_yielded"] == 1


async def test_unrelated_and_short_requests_take_the_normal_choice():
    router, x, y = two()
    assert await ask(router, turn(SYSTEM_A, "hello")) == "x"
    assert await ask(router, turn(SYSTEM_B, "hello")) == "y"  # no prefix in common: a new conversation
    short = [{"role": "user", "content": "Hi"}]
    assert [await ask(router, short) for _ in range(2)] == ["x", "x"]  # too short to count: normal choice
    stats = router.stream_stats()
    assert (stats["affinity_hits"], stats["affinity_misses"]) == (0, 2)


async def test_generate_shares_a_system_prompt_and_a_prompt_s_leading_blocks():
    router, _, _ = two()
    home = await ask_generate(router, {"system": SYSTEM_A, "prompt": "one"})
    other = await ask_generate(router, {"system": SYSTEM_B, "prompt": "one"})
    assert home != other
    assert await ask_generate(router, {"system": SYSTEM_A, "prompt": "two"}) == home
    text = "Once upon a time " * 200
    raw = await ask_generate(router, {"raw": True, "prompt": text})
    assert await ask_generate(router, {"raw": True, "prompt": text + " the end"}) == raw


async def ask_generate(router: Router, body: dict) -> str:
    async with asyncio.timeout(TIMEOUT):
        chunks = [c async for c in router.generate({"model": "a", **body})]
    return chunks[0]["message"]["content"]


def test_memory_is_bounded_and_forgets_after_the_ttl():
    now = [0.0]
    affinity = Affinity(ttl=60, max_entries=50, clock=lambda: now[0])
    backends = [Scripted(f"b{i}", ["a"]) for i in range(2)]
    convs = [conversation("chat", {"model": "a", "messages": turn(f"{i} " + SYSTEM_A, *["turn"] * 30)})
             for i in range(10)]
    for i, conv in enumerate(convs):
        affinity.served(conv, backends[i % 2])
    assert len(affinity) == 50  # 10 conversations of 31 prefixes each, only the 50 latest kept
    assert affinity.home(convs[0]) is None and affinity.home(convs[-1]) is backends[1]
    now[0] = 61.0
    assert affinity.home(convs[-1]) is None  # past the TTL
    huge = conversation("chat", {"model": "a", "messages": turn(SYSTEM_A, *["x" * 600] * 500)})
    assert huge is not None and len(huge.prefixes) == 64  # a request adds its 64 longest prefixes at most
    assert conversation("chat", {"model": "a", "messages": [{"role": "user", "content": "x" * (MIN_CHARS - 64)}]}) \
        is None
    assert conversation("embed", {"model": "a", "input": SYSTEM_A}) is None
