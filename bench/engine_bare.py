"""Figure 6's baseline: bare llama-cpp-python on the in-box engine's model, same prompt and settings.

    python bench/engine_bare.py '{"model_path": "...", "prompt": "...", "tokens": 64, "threads": 2, "ctx": 2048}'

Prints JSON: tokens generated and tokens/s between the first and the last token (prompt
evaluation excluded), the same definition the harness applies to the engine's stream.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    spec = json.loads(sys.argv[1])
    from llama_cpp import Llama

    llm = Llama(model_path=spec["model_path"], n_ctx=spec["ctx"], n_threads=spec["threads"],
                n_threads_batch=spec["threads"], n_batch=512, verbose=False)
    for _ in llm.generate(llm.tokenize(b"Hello", add_bos=True), temp=0.0):
        break  # warm-up, as the engine does at load
    results = []
    for _ in range(spec.get("repeats", 3)):
        llm.reset()
        stamps = []
        tokens = llm.generate(llm.tokenize(spec["prompt"].encode(), add_bos=True), temp=0.0, top_k=1)
        for token in tokens:
            stamps.append(time.perf_counter())
            llm.detokenize([token])
            if len(stamps) >= spec["tokens"]:
                break
        tokens.close()
        results.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    results.sort()
    print(json.dumps({"tokens": spec["tokens"], "tokens_per_s": results[len(results) // 2], "all": results}))


if __name__ == "__main__":
    main()
