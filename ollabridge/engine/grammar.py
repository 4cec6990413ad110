"""Grammar-constrained sampling that checks one token per step instead of the whole vocabulary.

llama-cpp-python puts the grammar inside the sampler chain, so every step runs the grammar over all
of Gemma's 262k tokens (`format: "json"` ran ~4x slower than free text). llama.cpp's own common
sampler instead samples without the grammar, checks only the chosen token, and does the full grammar
pass only when that token is rejected. `constrained(llm, gbnf)` does the same for the
`Llama.generate` calls made inside it (same thread; the generation lock is held by the caller).
"""

from __future__ import annotations

import ctypes
import math
from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def constrained(llm: Any, gbnf: str) -> Iterator[None]:
    """Make `llm.generate(..., grammar=None)` follow `gbnf` (GBNF text, root rule ``root``)."""
    import llama_cpp
    import numpy as np
    from llama_cpp._internals import LlamaTokenDataArray

    grammar = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, gbnf.encode("utf-8"), b"root")
    if not grammar:
        raise ValueError("invalid grammar")
    n_vocab = llm.n_vocab()
    full = LlamaTokenDataArray(n_vocab=n_vocab)
    one = (llama_cpp.llama_token_data * 1)()
    single = llama_cpp.llama_token_data_array(data=ctypes.cast(one, llama_cpp.llama_token_data_p),
                                              size=1, selected=-1, sorted=False)

    def candidates(logits: Any) -> Any:
        full.copy_logits(logits)
        cand = full.candidates
        cand.data = full.candidates_data.ctypes.data_as(llama_cpp.llama_token_data_p)
        cand.selected = -1
        return ctypes.byref(cand)

    def sample(*_args: Any, idx: int | None = None, **_kwargs: Any) -> int:
        chain = llm._sampler.sampler  # built by generate() with grammar=None
        ridx = idx - llm.n_tokens if idx is not None else -1
        logits = ctypes.cast(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, ridx), ctypes.POINTER(ctypes.c_float))
        logits = np.ctypeslib.as_array(logits, shape=(n_vocab,))
        llama_cpp.llama_sampler_apply(chain, candidates(logits))
        token = full.candidates.data[full.candidates.selected].id
        one[0].id, one[0].logit, one[0].p = token, 0.0, 0.0
        single.size, single.selected = 1, -1
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(single))
        if math.isinf(single.data[0].logit):  # rejected: constrain the whole vocabulary, sample again
            ref = candidates(logits)
            llama_cpp.llama_sampler_apply(grammar, ref)
            llama_cpp.llama_sampler_apply(chain, ref)
            token = full.candidates.data[full.candidates.selected].id
        llama_cpp.llama_sampler_accept(grammar, token)
        llama_cpp.llama_sampler_accept(chain, token)
        return token

    llm.sample = sample  # instance attribute: shadows Llama.sample for generate()
    try:
        yield
    finally:
        del llm.sample
        llama_cpp.llama_sampler_free(grammar)
