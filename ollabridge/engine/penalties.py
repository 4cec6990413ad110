"""Repetition penalties applied to the few recent tokens' logits instead of the whole vocabulary.

llama-cpp-python puts llama.cpp's penalties sampler in the chain, which looks each of Gemma's 262k
candidates up in a hash map every step (~0.6 ms a token, ~5% of 2-core decode; bench figure 6).
`penalized(llm, ...)` does the same float32 arithmetic in place on the logits of the <= last_n
tokens generated so far, before the chain samples; `generate()` must then get neutral penalties
(repeat 1, frequency 0, presence 0). Same thread as the `generate()` calls made inside it.
"""

from __future__ import annotations

import ctypes
from collections import Counter, deque
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def penalized(llm: Any, last_n: int, repeat: float, frequency: float, presence: float) -> Iterator[None]:
    """Make `llm.generate(...)` penalize like llama.cpp's penalties sampler with these settings."""
    if last_n == 0 or (repeat == 1.0 and frequency == 0.0 and presence == 0.0):
        yield
        return
    import llama_cpp
    import numpy as np

    rep, freq, pres = np.float32(repeat), np.float32(frequency), np.float32(presence)
    n_vocab, window, counts = llm.n_vocab(), deque(), Counter()
    shadowed = llm.__dict__.get("sample")  # grammar.constrained's replacement, if inside it
    inner = llm.sample

    def sample(*args: Any, idx: int | None = None, **kwargs: Any) -> int:
        if counts:
            ridx = idx - llm.n_tokens if idx is not None else -1
            ptr = ctypes.cast(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, ridx), ctypes.POINTER(ctypes.c_float))
            logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,))
            ids = np.fromiter(counts.keys(), dtype=np.intc, count=len(counts))
            n = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
            x = logits[ids]
            x = np.where(x <= 0, x * rep, x / rep)
            x -= n * freq + np.float32(1) * pres  # every counted token has count > 0
            logits[ids] = x
        token = inner(*args, idx=idx, **kwargs)
        window.append(token)
        counts[token] += 1
        if len(window) > last_n:
            old = window.popleft()
            counts[old] -= 1
            if not counts[old]:
                del counts[old]
        return token

    llm.sample = sample  # instance attribute: shadows Llama.sample (or grammar's) for generate()
    try:
        yield
    finally:
        if shadowed is None:
            del llm.sample
        else:
            llm.sample = shadowed
