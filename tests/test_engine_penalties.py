"""The engine's own repetition penalties pick exactly the tokens llama.cpp's penalties sampler picks."""

from __future__ import annotations

import pytest

from ollabridge.engine.model import default_cache_dir, resolve_model
from ollabridge.engine.penalties import penalized

PROMPT = b"List the days of the week: Monday, Tuesday, Monday, Tuesday,"


@pytest.fixture(scope="module")
def llm():
    from llama_cpp import Llama

    model = resolve_model("", default_cache_dir())
    return Llama(model_path=str(model.path), n_ctx=512, n_threads=2, verbose=False, last_n_tokens_size=64)


def tokens(llm, n: int = 40, **kwargs) -> list[int]:
    llm.reset()
    out = []
    for token in llm.generate(llm.tokenize(PROMPT, add_bos=True), top_k=1, temp=0.0, **kwargs):
        out.append(token)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("repeat, frequency, presence", [(1.3, 0.0, 0.0), (1.1, 0.5, 0.3), (1.0, 0.0, 1.5)])
def test_penalized_matches_the_stock_sampler(llm, repeat, frequency, presence):
    stock = tokens(llm, repeat_penalty=repeat, frequency_penalty=frequency, presence_penalty=presence)
    with penalized(llm, llm.last_n_tokens_size, repeat, frequency, presence):
        ours = tokens(llm, repeat_penalty=1.0)
    assert ours == stock
    assert stock != tokens(llm, repeat_penalty=1.0)  # the penalty mattered, so equality means something
