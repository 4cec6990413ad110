"""Mid-stream resume and stall detection, in process: the pure continuation and splice
(ollabridge/routing/resume.py), and the router resuming streams of in-memory backends that fail,
stall or answer a probe (serve.py, stall.py). The same through real processes and every client:
tests/test_resume_e2e.py."""

from __future__ import annotations

import asyncio
import re

import pytest

from ollabridge.backends.base import Backend, BackendHealth
from ollabridge.errors import BackendError
from ollabridge.routing import Router
from ollabridge.routing.resume import Transcript
from ollabridge.routing.stall import StallPolicy

TIMEOUT = 5.0
TOK = re.compile(r"tok\d+ ")
ASK = [{"role": "user", "content": "hi"}]


def _chat(content="", thinking=None, calls=None, done=False, **counts):
    message = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return {"model": "m", "message": message, "done": done, **counts}


# -- the pure part: continuation and splice -----------------------------------------------------
def test_chat_continuation_appends_what_was_streamed_as_a_trailing_assistant_message():
    t = Transcript("chat")
    call = {"function": {"name": "f", "arguments": {"x": 1}}}
    for chunk in (_chat(thinking="hmm "), _chat("tok0 "), _chat("tok1 "), _chat(calls=[call])):
        assert t.take(chunk) == chunk  # the first backend's chunks pass as they are
    t.lost(total_ns=5, eval_ns=3)
    body = {"model": "m", "messages": ASK, "options": {"num_predict": 10, "temperature": 0}, "think": True}
    op, cont = t.continuation(body)
    assert op == "chat"
    assert cont["messages"] == [*ASK, {"role": "assistant", "content": "tok0 tok1 ", "thinking": "hmm ",
                                       "tool_calls": [call]}]
    assert cont["options"] == {"num_predict": 6, "temperature": 0}  # 4 tokens already streamed
    assert cont["think"] is True and body["messages"] == ASK  # the original is left as it was


def test_a_callers_prefill_is_extended_not_doubled():
    t = Transcript("chat")
    t.take(_chat("tok0 "))
    t.lost(0, 0)
    _, cont = t.continuation({"model": "m", "messages": [*ASK, {"role": "assistant", "content": "Sure: "}]})
    assert cont["messages"] == [*ASK, {"role": "assistant", "content": "Sure: tok0 "}]


def test_splice_sums_the_counts_and_drops_tool_calls_already_sent():
    t = Transcript("chat")
    call = {"function": {"name": "f", "arguments": {"x": 1}}}
    t.take(_chat("tok0 "))
    t.take(_chat(calls=[call]))
    t.lost(total_ns=1000, eval_ns=400)
    t.next_segment("chat")
    assert "tool_calls" not in t.take(_chat(calls=[dict(call)]))["message"]  # the same call again: dropped
    other = {"function": {"name": "g", "arguments": {}}}
    assert t.take(_chat(calls=[call, other]))["message"]["tool_calls"] == [other]
    final = t.final(_chat(done=True, prompt_eval_count=7, eval_count=3, eval_duration=50, total_duration=90))
    assert (final["prompt_eval_count"], final["eval_count"]) == (7, 2 + 3)
    assert (final["eval_duration"], final["total_duration"]) == (450, 1090)


def test_generate_continues_as_the_chat_its_template_renders_and_answers_as_generate():
    t = Transcript("generate")
    t.take({"model": "m", "response": "", "thinking": "hmm ", "done": False})
    t.take({"model": "m", "response": "tok0 ", "done": False})
    t.lost(0, 0)
    body = {"model": "m", "prompt": "Why?", "system": "Be brief.", "images": ["aGk="], "think": True,
            "options": {"seed": 1}, "keep_alive": "5m", "stream": True}
    op, cont = t.continuation(body)
    assert op == "chat"
    assert cont == {"model": "m", "options": {"seed": 1}, "think": True, "keep_alive": "5m", "stream": True,
                    "messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Why?", "images": ["aGk="]},
                                 {"role": "assistant", "content": "tok0 ", "thinking": "hmm "}]}
    t.next_segment(op)
    assert t.take(_chat("tok1 ")) == {"model": "m", "response": "tok1 ", "done": False}
    final = t.final(_chat(done=True, eval_count=1, done_reason="stop"))
    assert final["response"] == "" and final["eval_count"] == 3 and "message" not in final


def test_raw_and_fill_in_the_middle_generates_grow_their_prompt():
    for extra in ({"raw": True}, {"suffix": "return x"}):
        t = Transcript("generate")
        t.take({"model": "m", "response": "tok0 ", "done": False})
        t.lost(0, 0)
        op, cont = t.continuation({"model": "m", "prompt": "def f(", **extra})
        assert (op, cont) == ("generate", {"model": "m", "prompt": "def f(tok0 ", **extra})


@pytest.mark.parametrize("body", [
    {"model": "m", "prompt": "p", "template": "{{ .Prompt }}"},
    {"model": "m", "prompt": "p", "context": [1, 2]},
    {"model": "m", "prompt": "p", "format": "json"},
])
def test_what_cannot_be_continued_is_not(body):
    t = Transcript("generate")
    t.take({"model": "m", "response": "{", "done": False})
    t.lost(0, 0)
    assert t.continuation(body) is None


def test_an_answer_lost_at_its_length_ends_there():
    t = Transcript("chat")
    t.take(_chat("tok0 "))
    t.take(_chat("tok1 "))
    t.lost(0, 0)
    body = {"model": "m", "messages": ASK, "options": {"num_predict": 2}}
    assert t.continuation(body) is None
    assert t.exhausted(body)["done_reason"] == "length" and t.exhausted(body)["eval_count"] == 2
    assert t.exhausted({**body, "options": {"num_predict": 3}}) is None


# -- the router: resuming in-memory backends ------------------------------------------------------
class Tokens(Backend):
    """Streams "tokK " words as tests/fake_ollama.py does, continuing a trailing assistant message:
    `total` words in all, `fail_after` chunks then a 502, or `freeze_after` chunks then silence until
    `lost` (when `probes`, `probe` answers `alive`)."""

    def __init__(self, name, *, total=6, priority=10, fail_after=None, freeze_after=None, status=502,
                 probes=False, alive=False, delay=0.0, wake_after=None):
        super().__init__(name)
        self.priority, self.total, self.fail_after, self.freeze_after = priority, total, fail_after, freeze_after
        self.status, self.probes, self.alive, self.delay, self.wake_after = status, probes, alive, delay, wake_after
        self.bodies: list[tuple[str, dict]] = []
        self.gone = asyncio.Event()
        self.probed = 0

    async def stream(self, op, body):
        self.bodies.append((op, body))
        last = (body.get("messages") or [{}])[-1]
        start = len(TOK.findall(last.get("content") or "")) if last.get("role") == "assistant" else 0
        for n, i in enumerate(range(start, self.total)):
            if n == self.fail_after:
                raise BackendError(f"{self.name} died", status=self.status, retryable=True, backend=self.name)
            if n == self.freeze_after:
                try:
                    await asyncio.wait_for(self.gone.wait(), self.wake_after)
                    raise BackendError(f"{self.name} was lost", retryable=True, backend=self.name)
                except TimeoutError:
                    pass  # slow, not frozen: it goes on
            if self.delay:
                await asyncio.sleep(self.delay)
            yield _chat(f"tok{i} ")
        yield _chat(done=True, prompt_eval_count=3, eval_count=self.total - start, done_reason="stop")

    async def probe(self, timeout):
        self.probed += 1
        return self.alive

    def lost(self, reason):
        self.gone.set()

    async def call(self, op, body):
        return {}

    async def fetch_models(self):
        return [{"name": "m", "model": "m"}]

    async def health(self):
        return BackendHealth(True)


def _router(*backends, **kw) -> Router:
    router = Router(**kw)
    for b in backends:
        router.add(b)
    return router


async def _answer(router, body=None, served=None):
    async with asyncio.timeout(TIMEOUT):
        return [c async for c in router.chat(body or {"model": "m", "messages": ASK}, served)]


def _text(chunks):
    return "".join(c["message"]["content"] for c in chunks)


async def test_a_stream_lost_mid_answer_is_finished_by_another_backend_as_if_nothing_happened():
    lost, other = Tokens("lost", priority=0, fail_after=3), Tokens("other")
    router, served = _router(lost, other), {}
    chunks = await _answer(router, served=served)
    assert _text(chunks) == "tok0 tok1 tok2 tok3 tok4 tok5 "
    assert [c["done"] for c in chunks].count(True) == 1 and chunks[-1]["done"]
    assert chunks[-1]["eval_count"] == 6 and chunks[-1]["prompt_eval_count"] == 3
    assert other.bodies == [("chat", {"model": "m", "messages": [
        *ASK, {"role": "assistant", "content": "tok0 tok1 tok2 "}]})]
    assert served["backend"] == "other" and served["resumed"] == 1 and served["done"]["eval_count"] == 6
    assert router.stream_stats()["resumed"] == 1
    assert lost.stats.failed == 1 and lost.stats.in_flight == other.stats.in_flight == 0


async def test_resume_off_the_bound_or_no_other_backend_ends_with_the_error():
    for router in (_router(Tokens("a", fail_after=2), Tokens("b"), resume=False),  # off
                   _router(Tokens("a", fail_after=2)),  # no other backend has the model
                   _router(Tokens("a", priority=0, fail_after=2), Tokens("b", priority=1, fail_after=1),
                           Tokens("c", priority=2), max_resumes=1)):  # a second loss, past the bound
        seen = []
        with pytest.raises(BackendError):
            async with asyncio.timeout(TIMEOUT):
                async for chunk in router.chat({"model": "m", "messages": ASK}):
                    seen.append(chunk)
        assert not any(c["done"] for c in seen) and seen
        assert router.stream_stats()["resume_failed"] == 1


async def test_two_losses_within_the_bound_still_give_the_whole_answer():
    router = _router(Tokens("a", priority=0, fail_after=2), Tokens("b", priority=1, fail_after=1),
                     Tokens("c", priority=2))
    chunks = await _answer(router)
    assert _text(chunks) == "tok0 tok1 tok2 tok3 tok4 tok5 " and chunks[-1]["eval_count"] == 6
    assert router.stream_stats()["resumed"] == 2


async def test_a_client_error_mid_stream_is_not_resumed():
    router = _router(Tokens("a", priority=0, fail_after=2, status=400), Tokens("b"))
    with pytest.raises(BackendError):
        await _answer(router)


async def test_a_frozen_backend_is_probed_given_up_and_the_stream_resumed():
    frozen = Tokens("frozen", priority=0, freeze_after=3, probes=True, alive=False, delay=0.01)
    other = Tokens("other")
    router = _router(frozen, other, stall=StallPolicy(after=0.2, factor=4, ping=0.1))
    loop = asyncio.get_running_loop()
    started = loop.time()
    chunks = await _answer(router)
    assert _text(chunks) == "tok0 tok1 tok2 tok3 tok4 tok5 "
    assert frozen.probed == 1 and frozen.gone.is_set()
    assert loop.time() - started < 1.5  # 0.2 s silence, then the probe; no idle timeout here at all
    assert router.stream_stats()["stalls_lost"] == 1


async def test_a_slow_backend_that_answers_the_probe_keeps_its_stream():
    slow = Tokens("slow", priority=0, freeze_after=3, probes=True, alive=True, delay=0.01, wake_after=0.7)
    other = Tokens("other")
    router = _router(slow, other, stall=StallPolicy(after=0.2, factor=4, ping=0.1))
    chunks = await _answer(router)
    assert _text(chunks) == "tok0 tok1 tok2 tok3 tok4 tok5 "
    assert other.bodies == [] and not slow.gone.is_set()
    # Probed at 0.2 s of silence, then after twice as long (0.4 s more): both answered.
    assert slow.probed == 2 and router.stream_stats()["stall_probes_alive"] == 2


async def test_backends_that_cannot_be_probed_are_not_timed():
    frozen = Tokens("frozen", priority=0, freeze_after=3, probes=False, delay=0.01, wake_after=0.5)
    router = _router(frozen, Tokens("other"), stall=StallPolicy(after=0.1, factor=1, ping=0.1))
    chunks = await _answer(router)
    assert _text(chunks) == "tok0 tok1 tok2 tok3 tok4 tok5 " and frozen.probed == 0
