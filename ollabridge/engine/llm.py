"""llama.cpp behind an asyncio front: one generation at a time, in a worker thread, cancellable.

A llama.cpp context is not thread-safe, so generations take `_gen_lock` (FIFO: requests wait their
turn) and run on a dedicated one-thread pool, which also loads the model and runs its warm-up
decode. One thread for all of the model's decoding matters: llama-cpp-python's ggml uses OpenMP,
each thread that decodes keeps its own team of OpenMP workers, and once a process holds more of
those than cores, libgomp sleeps at ggml's per-op barriers instead of spinning (~64 futex waits a
token, ~20% of 2-core decode speed; bench figure 6). Text pieces reach the event loop through
`Job`: an asyncio.Queue fed with `call_soon_threadsafe` and bounded by a semaphore the consumer
releases. `Job.cancel()` (client gone) is seen by the worker before the next token, so the engine
is free again within a token. The lock is released when the worker actually returns, never earlier.

The context keeps the tokens of the last generation (one sequence): `Llama.generate` keeps the
longest common prefix of those and the next prompt in the KV cache and evaluates only the rest, so a
conversation's next turn (same system prompt and earlier turns) costs only its new messages; nothing
here resets it. The gateway's conversation affinity (routing/affinity.py) sends the next turn back.

Embeddings use a second Llama (embedding=True, mean pooling) created on the first embed request,
with its own lock; each call runs on a fresh thread that then exits, freeing its OpenMP team. Its
context is 512 tokens: llama.cpp computes full-vocabulary logits for every input token even in
embedding mode (262k x n_tokens floats for Gemma), so longer inputs cost ~1 GB per 512 tokens;
inputs are truncated to 512 tokens (or refused when truncate=false).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from .grammar import constrained
from .model import ModelFile
from .penalties import penalized
from .prompts import CHATML_STOP, GEMMA_STOP, GO_TEMPLATES, RenderedPrompt, chat_style, render_chat
from .sampling import FILL_CONTEXT, Sampling, TextStream

log = logging.getLogger("ollabridge.engine")

BUILTIN_NUM_PREDICT = 512  # cap when num_predict is unset for the base model, which rarely stops


@dataclass
class Prompt:
    tokens: list[int]
    stops: list[str]


@dataclass
class Stats:
    """Timings (ns) and counts of one generation, in Ollama's terms."""

    done_reason: str = "stop"
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    load_duration: int = 0  # time spent waiting for the engine (it is always loaded)
    context: list[int] = field(default_factory=list)


class Job:
    """One generation's hand-off between the worker thread and the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, window: int = 64):
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self._slots = threading.Semaphore(window)
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        """Ask the worker to stop; safe to call from the loop any number of times."""
        if not self.cancelled.is_set():
            self.cancelled.set()
            self._slots.release()  # wake a worker blocked on a full window

    def put(self, item: Any) -> bool:
        """Worker side: hand over a text piece, blocking while the window is full. False = stop."""
        if self.cancelled.is_set():
            return False
        self._slots.acquire()
        if self.cancelled.is_set():
            return False
        return self._deliver(item)

    def finish(self, item: Any) -> None:
        """Worker side: the last item (Stats or an exception); never blocks."""
        self._deliver(item)

    def _deliver(self, item: Any) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
            return True
        except RuntimeError:  # event loop closed: nobody is listening any more
            self.cancelled.set()
            return False

    async def events(self) -> AsyncIterator[Any]:
        """Text pieces, then the final Stats. Re-raises a worker exception."""
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Stats):
                yield item
                return
            self._slots.release()
            yield item


class Runner:
    """The loaded model: prompt building, generation and embeddings."""

    def __init__(self, model: ModelFile, *, n_ctx: int = 4096, n_threads: int | None = None,
                 embed_ctx: int = 512):
        self.model = model
        self.n_ctx = n_ctx
        # Every core, for prompts and decoding alike: on 2 cores, 2 llama threads stream ~68 tok/s and
        # 1 thread ~52 even though the server's own per-token work then competes (bench figure 6).
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.n_threads_batch = self.n_threads
        self.embed_ctx = embed_ctx
        self.default_num_predict = BUILTIN_NUM_PREDICT if model.builtin else FILL_CONTEXT
        self.llm: Any = None
        self._embedder: Any = None
        self.style = "chatml"
        self._formatter: Any = None
        self.load_seconds = 0.0
        self.loaded_at = time.time()
        self._gen_pool = ThreadPoolExecutor(1, thread_name_prefix="llama-gen")
        self._gen_lock = asyncio.Lock()
        self._embed_lock = asyncio.Lock()
        self._jobs: set[Job] = set()

    # --- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        """Load the GGUF (blocking) and warm it up with a one-token generation, on the decode thread."""
        self._gen_pool.submit(self._load_sync).result()

    def _load_sync(self) -> None:
        from llama_cpp import Llama

        started = time.perf_counter()
        self.llm = Llama(model_path=str(self.model.path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                         n_threads_batch=self.n_threads_batch, n_batch=512, verbose=False)
        self.style = chat_style(self.llm.metadata, self.model.builtin)
        if self.style == "jinja":
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            eos, bos = self.llm.token_eos(), self.llm.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=self.llm.metadata["tokenizer.chat_template"],
                eos_token=self.llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=self.llm._model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos])
        for _ in self.llm.generate(self.llm.tokenize(b"Hello", add_bos=True), temp=0.0):
            break  # first decode allocates buffers / faults pages in; do it before serving
        self.load_seconds = time.perf_counter() - started
        self.loaded_at = time.time()

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.llm.metadata) if self.llm else {}

    @property
    def n_params(self) -> int:
        return int(self.llm._model.n_params()) if self.llm else 0

    @property
    def template(self) -> str:
        if self.style == "jinja":
            return self.llm.metadata.get("tokenizer.chat_template", "")
        return GO_TEMPLATES[self.style]

    @property
    def stop_words(self) -> list[str]:
        return {"gemma": [GEMMA_STOP], "chatml": [CHATML_STOP]}.get(self.style, [])

    # --- prompts -------------------------------------------------------------------------------

    def _tokens(self, rendered: RenderedPrompt) -> Prompt:
        tokens = self.llm.tokenize(rendered.text.encode("utf-8"), add_bos=rendered.add_bos, special=True)
        return Prompt(self._fit(tokens), rendered.stops)

    def _fit(self, tokens: list[int]) -> list[int]:
        """Keep the prompt inside the context like Ollama: drop the oldest tokens (keep BOS)."""
        room = self.n_ctx - 16
        if len(tokens) <= room:
            return tokens
        keep = room // 2
        head = tokens[:1] if tokens and tokens[0] == self.llm.token_bos() else []
        return head + tokens[-(keep - len(head)):]

    def chat_prompt(self, messages: list[dict], tools: list[dict] | None = None) -> Prompt:
        return self._tokens(render_chat(self.style, messages, tools, self._formatter))

    def generate_prompt(self, prompt: str, system: str | None = None, raw: bool = False,
                        context: list[int] | None = None) -> Prompt:
        """/api/generate: raw text as-is, otherwise the prompt (and system) as one chat turn."""
        if raw:
            rendered = RenderedPrompt(prompt, [], add_bos=not context)
        else:
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            rendered = render_chat(self.style, msgs, None, self._formatter)
            rendered.add_bos = rendered.add_bos and not context
        result = self._tokens(rendered)
        if context:
            n_vocab = self.llm.n_vocab()
            if not all(isinstance(t, int) and 0 <= t < n_vocab for t in context):
                raise ValueError("context: token ids out of range for this model")
            result.tokens = self._fit(list(context) + result.tokens)
        return result

    # --- generation ----------------------------------------------------------------------------

    def new_job(self) -> Job:
        return Job(asyncio.get_running_loop())

    async def generate(self, job: Job, prompt: Prompt, sampling: Sampling,
                       grammar: str | None = None) -> AsyncIterator[str | Stats]:
        """Yield text pieces and then the final Stats; waits its turn for the model."""
        loop = asyncio.get_running_loop()
        waited = time.perf_counter_ns()
        await self._gen_lock.acquire()
        waited = time.perf_counter_ns() - waited
        try:
            future = loop.run_in_executor(self._gen_pool, self._run, job, prompt, sampling, grammar, waited)
        except BaseException:
            self._gen_lock.release()
            raise
        self._jobs.add(job)

        def worker_done(_f: Any) -> None:
            self._jobs.discard(job)
            self._gen_lock.release()

        future.add_done_callback(worker_done)
        try:
            async for item in job.events():
                yield item
        finally:
            job.cancel()

    def _run(self, job: Job, prompt: Prompt, s: Sampling, grammar: str | None, waited: int) -> None:
        try:
            job.finish(self._generate_sync(job, prompt, s, grammar, waited))
        except BaseException as exc:  # delivered to the request, never lost in the pool
            job.finish(exc)

    def _generate_sync(self, job: Job, prompt: Prompt, s: Sampling, grammar: str | None, waited: int) -> Stats:
        llm, stats = self.llm, Stats(load_duration=waited, prompt_eval_count=len(prompt.tokens))
        room = self.n_ctx - len(prompt.tokens)
        limit = s.num_predict if s.num_predict and s.num_predict > 0 else self.default_num_predict
        limit = room if limit == FILL_CONTEXT or limit < 0 else min(limit, room)
        llm.set_seed(s.seed if s.seed is not None else random.getrandbits(31))
        llm.last_n_tokens_size = self.n_ctx if s.repeat_last_n < 0 else s.repeat_last_n
        text = TextStream(s.stop + prompt.stops)
        completion: list[int] = []
        started = time.perf_counter_ns()
        stats.done_reason = "length"
        if job.cancelled.is_set() or limit <= 0:
            return stats
        with constrained(llm, grammar) if grammar else nullcontext(), \
                penalized(llm, llm.last_n_tokens_size, s.repeat_penalty, s.frequency_penalty, s.presence_penalty):
            first = self._sample_loop(job, llm, prompt, s, limit, text, completion, stats)
        tail = text.flush()
        if tail and stats.done_reason != "cancel":
            job.put(tail)
        end = time.perf_counter_ns()
        stats.prompt_eval_duration = first - started
        stats.eval_count = len(completion)
        stats.eval_duration = end - first
        stats.context = prompt.tokens + completion
        return stats

    @staticmethod
    def _sample_loop(job: Job, llm: Any, prompt: Prompt, s: Sampling, limit: int, text: TextStream,
                     completion: list[int], stats: Stats) -> int:
        """Generate until EOG, a stop string, `limit` tokens or cancellation; sets done_reason.

        Returns when the first token was sampled (perf_counter_ns), i.e. the end of prompt eval.
        """
        import llama_cpp

        first = 0
        tokens = llm.generate(
            prompt.tokens, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p, typical_p=s.typical_p,
            temp=s.temperature, repeat_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0)  # penalized()
        try:
            for token in tokens:
                first = first or time.perf_counter_ns()
                if job.cancelled.is_set():
                    stats.done_reason = "cancel"
                    break
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                    stats.done_reason = "stop"
                    break
                completion.append(token)
                piece = text.feed(llm.detokenize([token]))
                if piece and not job.put(piece):
                    stats.done_reason = "cancel"
                    break
                if text.stopped:
                    stats.done_reason = "stop"
                    break
                if len(completion) >= limit:
                    break
        finally:
            tokens.close()
        return first or time.perf_counter_ns()

    # --- embeddings ----------------------------------------------------------------------------

    async def embed(self, texts: list[str], truncate: bool = True) -> tuple[list[list[float]], int]:
        """Mean-pooled, unnormalized embeddings for `texts` and the number of tokens read."""
        loop = asyncio.get_running_loop()
        async with self._embed_lock:
            # A short-lived thread: a lasting one would keep a second OpenMP team (see module doc).
            pool = ThreadPoolExecutor(1, thread_name_prefix="llama-embed")
            try:
                return await loop.run_in_executor(pool, self._embed_sync, texts, truncate)
            finally:
                pool.shutdown(wait=False)

    def _embed_sync(self, texts: list[str], truncate: bool) -> tuple[list[list[float]], int]:
        if self._embedder is None:
            import llama_cpp

            started = time.perf_counter()
            self._embedder = llama_cpp.Llama(
                model_path=str(self.model.path), embedding=True, n_ctx=self.embed_ctx,
                n_batch=self.embed_ctx, n_ubatch=self.embed_ctx, n_threads=self.n_threads_batch,
                n_threads_batch=self.n_threads_batch, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                verbose=False)
            log.info("embedding instance of %s loaded in %.2fs", self.model.name, time.perf_counter() - started)
        if not truncate:
            for t in texts:
                if len(self._embedder.tokenize(t.encode("utf-8"))) > self.embed_ctx:
                    raise ValueError("input length exceeds the context length")
        vectors, count = self._embedder.embed(texts, truncate=True, return_count=True)
        return [list(map(float, v)) for v in vectors], int(count)

    # --- lifecycle -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop running generations and let the worker threads end."""
        for job in list(self._jobs):
            job.cancel()
        self._gen_pool.shutdown(wait=False, cancel_futures=True)
