"""The in-box engine (llama.cpp on Gemma 3 270M) through the official `ollama` client and raw HTTP.

The model is a small base model: tests check mechanics (fields, limits, determinism, grammar,
cancellation), never answer quality. Generations are kept to a few dozen tokens.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import pytest

from ollabridge.engine.model import (HubRef, ModelSpecError, human_params, name_for_file, name_matches,
                                     parse_hf_spec, resolve_model)
from ollabridge.engine.prompts import render_chatml, render_gemma
from ollabridge.engine.sampling import TextStream, grammar_for_format, sampling_from_options
from ollabridge.engine.shapes import ToolCallBuffer, l2_normalize, parse_tool_calls

MODEL = "gemma3:270m"
COUNTING = "1, 2, 3, 4, 5,"  # a raw prompt the base model continues indefinitely at temperature 0


@pytest.fixture(scope="module")
def client(engine_url: str) -> ollama.Client:
    return ollama.Client(host=engine_url, timeout=60)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --- the server, through the official client ---------------------------------------------------

def test_root_and_version(engine_url: str) -> None:
    assert httpx.get(engine_url).text == "Ollama is running"
    version = httpx.get(f"{engine_url}/api/version").json()["version"]
    assert version.startswith("0.") and "ollabridge" in version


def test_chat_non_stream(client: ollama.Client) -> None:
    r = client.chat(model=MODEL, messages=_user("Say hello."), options={"num_predict": 12, "seed": 1})
    assert r.done and r.done_reason in ("stop", "length")
    assert r.message.role == "assistant" and r.message.content
    assert 0 < r.eval_count <= 12 and r.prompt_eval_count > 0
    assert r.total_duration >= r.eval_duration > 0 and r.prompt_eval_duration > 0


def test_chat_stream(client: ollama.Client) -> None:
    parts = list(client.chat(model=MODEL, messages=_user("Tell me about cats."), stream=True,
                             options={"num_predict": 12, "seed": 1}))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert parts[-1].done_reason in ("stop", "length") and parts[-1].eval_count > 0
    assert "".join(p.message.content for p in parts).strip()
    assert len(parts) > 2  # really streamed, token by token


def test_num_predict_is_a_hard_limit(client: ollama.Client) -> None:
    r = client.chat(model=MODEL, messages=_user("Write a long story about a dragon."),
                    options={"num_predict": 5, "temperature": 0})
    assert r.eval_count <= 5 and r.done_reason == "length"
    g = client.generate(model=MODEL, prompt=COUNTING, raw=True, options={"num_predict": 7, "temperature": 0})
    assert g.eval_count == 7 and g.done_reason == "length"


def test_seed_makes_sampling_deterministic(client: ollama.Client) -> None:
    def run(temperature: float) -> str:
        return client.chat(model=MODEL, messages=_user("Name a fruit."),
                           options={"num_predict": 16, "temperature": temperature, "seed": 42}).message.content

    assert run(0) == run(0)
    assert run(0.9) == run(0.9)  # same seed, same sampled text


def test_stop_sequences(client: ollama.Client) -> None:
    r = client.generate(model=MODEL, prompt=COUNTING, raw=True,
                        options={"num_predict": 40, "temperature": 0, "stop": [" 9,"]})
    assert r.done_reason == "stop" and "8" in r.response and "9" not in r.response
    parts = list(client.generate(model=MODEL, prompt=COUNTING, raw=True, stream=True,
                                 options={"num_predict": 40, "temperature": 0, "stop": ["8"]}))
    text = "".join(p.response for p in parts)
    assert parts[-1].done_reason == "stop" and "7" in text and "8" not in text


def test_format_json(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Give me a tiny JSON object."},
                {"role": "assistant", "content": '{"a": 1}'},
                {"role": "user", "content": "Another tiny JSON object."}]
    r = client.chat(model=MODEL, messages=messages, format="json", options={"num_predict": 40, "temperature": 0})
    assert isinstance(json.loads(r.message.content), dict)


def test_format_json_schema(client: ollama.Client) -> None:
    schema = {"type": "object", "required": ["name", "age", "alive"], "properties": {
        "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}, "alive": {"type": "boolean"}}}
    r = client.chat(model=MODEL, messages=_user("Describe a person as JSON."), format=schema,
                    options={"num_predict": 40, "temperature": 0})
    data = json.loads(r.message.content)
    assert isinstance(data["name"], str) and isinstance(data["age"], int) and isinstance(data["alive"], bool)


def test_generate(client: ollama.Client) -> None:
    r = client.generate(model=MODEL, prompt="Why is the sky blue?", system="Be short.",
                        options={"num_predict": 8, "seed": 3})
    assert r.done and r.response and r.eval_count > 0 and r.context
    raw = client.generate(model=MODEL, prompt="The capital of France is", raw=True,
                          options={"num_predict": 8, "temperature": 0})
    assert raw.response.strip() and raw.done_reason == "length"


def test_empty_request_loads_model(client: ollama.Client) -> None:
    assert client.chat(model=MODEL, messages=[]).done_reason == "load"
    assert client.generate(model=MODEL, prompt="").done_reason == "load"


def test_embed(client: ollama.Client) -> None:
    r = client.embed(model=MODEL, input=["hello world", "the cat sat on the mat"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == len(r.embeddings[1]) > 100
    for vector in r.embeddings:
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-4)
    assert r.embeddings[0] != r.embeddings[1] and r.prompt_eval_count > 0
    single = client.embed(model=MODEL, input="hello world")
    assert single.embeddings[0] == pytest.approx(r.embeddings[0], abs=1e-4)
    assert client.embed(model=MODEL, input=[]).embeddings == []
    with pytest.raises(ollama.ResponseError) as err:  # longer than the embedding context
        client.embed(model=MODEL, input="word " * 2000, truncate=False)
    assert err.value.status_code == 400


def test_embeddings_legacy(client: ollama.Client) -> None:
    r = client.embeddings(model=MODEL, prompt="hello world")
    assert len(r.embedding) == len(client.embed(model=MODEL, input="x").embeddings[0])
    assert all(isinstance(v, float) for v in r.embedding)


def test_list_show_ps(client: ollama.Client, engine_url: str) -> None:
    listed = client.list().models
    assert [m.model for m in listed] == [MODEL]
    assert listed[0].details.format == "gguf" and listed[0].details.quantization_level == "Q4_K_M"
    assert listed[0].size > 200_000_000 and len(listed[0].digest) == 64
    shown = client.show(MODEL)
    assert "completion" in shown.capabilities and shown.details.family == "gemma3"
    assert "BASE model" in shown.modelfile and "<start_of_turn>" in shown.template
    assert shown.modelinfo["general.architecture"] == "gemma3"
    assert "BASE model" in shown.modelinfo["ollabridge.notice"]
    assert "BASE model" in httpx.post(f"{engine_url}/api/show", json={"model": MODEL}).json()["notice"]
    running = client.ps().models
    assert running[0].model == MODEL and running[0].size_vram == 0 and running[0].expires_at


@pytest.mark.parametrize("call", [
    lambda c: c.chat(model="llama3:8b", messages=_user("hi")),
    lambda c: c.generate(model="nope", prompt="hi"),
    lambda c: c.embed(model="nope", input="hi"),
    lambda c: c.show("nope"),
])
def test_unknown_model_is_404(client: ollama.Client, call) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        call(client)
    assert err.value.status_code == 404 and "not found" in err.value.error


def test_model_name_without_tag_is_accepted(client: ollama.Client) -> None:
    assert client.chat(model="gemma3", messages=_user("hi"), options={"num_predict": 2}).done


def test_tools_and_tool_messages_do_not_crash(client: ollama.Client) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    messages = [{"role": "system", "content": "You call tools."},
                {"role": "user", "content": "Weather in Paris?", "images": []},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "18C and sunny", "tool_name": "get_weather"}]
    r = client.chat(model=MODEL, messages=messages, tools=[tool], options={"num_predict": 24, "seed": 5})
    assert r.done and (r.message.content or r.message.tool_calls)
    streamed = list(client.chat(model=MODEL, messages=messages, tools=[tool], stream=True,
                                options={"num_predict": 24, "seed": 5}))
    assert streamed[-1].done


def test_model_management_is_refused(client: ollama.Client) -> None:
    assert client.pull(MODEL).status == "success"  # already here
    for call in (lambda: client.pull("llama3"), lambda: client.delete(MODEL),
                 lambda: client.copy(MODEL, "other")):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 501 and "OLLAMA_BASE_URL" in err.value.error


# --- raw HTTP: errors, concurrency, cancellation -----------------------------------------------

def test_errors_are_ollama_shaped(engine_url: str) -> None:
    bad_json = httpx.post(f"{engine_url}/api/chat", content=b"{not json")
    assert bad_json.status_code == 400 and "error" in bad_json.json()
    cases = [{"messages": []},  # no model
             {"model": MODEL, "messages": [{"content": "no role"}]},
             {"model": MODEL, "messages": _user("x"), "format": "xml"},
             {"model": MODEL, "messages": _user("x"), "options": {"num_predict": "many"}}]
    for body in cases:
        r = httpx.post(f"{engine_url}/api/chat", json=body)
        assert r.status_code == 400 and set(r.json()) == {"error"}, (body, r.text)
    # curl -d sends a form Content-Type; Ollama reads the body as JSON anyway
    form = httpx.post(f"{engine_url}/api/show", content=json.dumps({"model": MODEL}),
                      headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 200


def test_concurrent_requests_take_turns(engine_url: str) -> None:
    body = {"model": MODEL, "prompt": COUNTING, "raw": True, "stream": False,
            "options": {"num_predict": 6, "temperature": 0}}
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: httpx.post(f"{engine_url}/api/generate", json=body, timeout=60).json(),
                                range(3)))
    assert [r["eval_count"] for r in results] == [6, 6, 6]
    assert len({r["response"] for r in results}) == 1


def test_client_disconnect_frees_the_engine(engine_url: str) -> None:
    long_body = {"model": MODEL, "prompt": COUNTING, "raw": True, "options": {"num_predict": 2000, "temperature": 0}}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{engine_url}/api/generate", json=long_body) as r:
            lines = r.iter_lines()
            first = [json.loads(next(lines)) for _ in range(2)]
        assert not any(line["done"] for line in first)
    # The 2000-token run would hold the engine for tens of seconds; the next request gets it at once.
    started = time.monotonic()
    short = httpx.post(f"{engine_url}/api/generate", timeout=15, json={
        "model": MODEL, "prompt": "Hello", "raw": True, "stream": False, "options": {"num_predict": 3}}).json()
    assert short["done"] and short["eval_count"] <= 3
    assert short["load_duration"] < 2e9  # nanoseconds spent waiting for the engine
    assert time.monotonic() - started < 10


# --- pure helpers (no model) ---------------------------------------------------------------------

def test_text_stream_holds_back_stop_prefixes_and_joins_utf8() -> None:
    s = TextStream(["STOP"])
    assert s.feed(b"ab S") == "ab "
    assert s.feed(b"T") == ""
    assert s.feed(b"x") == "STx"
    assert s.feed(b"yySTO") == "yy"
    assert s.feed(b"P and more") == "" and s.stopped
    u = TextStream([])
    euro = "€".encode()
    assert u.feed(euro[:1]) == "" and u.feed(euro[1:]) == "€"
    held = TextStream(["ST"])
    assert held.feed(b"S") == "" and held.flush() == "S"  # generation ended: release held text


def test_options_and_format_validation() -> None:
    s = sampling_from_options({"temperature": 0, "seed": 7, "stop": "x", "num_ctx": 99999, "num_predict": 3})
    assert (s.temperature, s.seed, s.stop, s.num_predict) == (0.0, 7, ["x"], 3)
    with pytest.raises(ValueError):
        sampling_from_options({"top_k": "lots"})
    assert grammar_for_format(None) is None and "root" in grammar_for_format("json")
    assert "root" in grammar_for_format({"type": "object", "properties": {"a": {"type": "integer"}}})
    with pytest.raises(ValueError):
        grammar_for_format("yaml")


def test_names_and_model_specs(tmp_path: Path) -> None:
    assert name_matches("gemma3:270m", "gemma3:270m") and name_matches("GEMMA3", "gemma3:270m")
    assert name_matches("library/gemma3:270m", "gemma3:270m")
    assert not name_matches("gemma3:1b", "gemma3:270m") and not name_matches("", "gemma3:270m")
    assert name_for_file(Path("/m/mistral-7b.Q4_K_M.gguf")) == "mistral-7b.Q4_K_M:latest"
    assert human_params(268098176) == "268.10M" and human_params(7_600_000_000) == "7.6B"
    gguf = tmp_path / "My Model.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(gguf), tmp_path).name == "My-Model:latest"
    assert parse_hf_spec("hf:owner/repo/sub/file.gguf") == HubRef("owner/repo", "sub/file.gguf")
    with pytest.raises(ModelSpecError):
        resolve_model("hf:owner/file.gguf", tmp_path)
    with pytest.raises(ModelSpecError):
        resolve_model(str(tmp_path / "missing.gguf"), tmp_path)


def test_prompt_rendering() -> None:
    g = render_gemma([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                      {"role": "assistant", "content": "A"}, {"role": "tool", "content": "T"}])
    assert g.text == ("<start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n"
                      "<start_of_turn>user\nTool result: T<end_of_turn>\n<start_of_turn>model\n")
    c = render_chatml([{"role": "user", "content": "U"}])
    assert c.text == "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"


def test_tool_call_parsing() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert parse_tool_calls('{"name": "f", "arguments": {"x": 1}}', tools) == [
        {"function": {"name": "f", "arguments": {"x": 1}}}]
    assert parse_tool_calls('{"name": "g", "arguments": {}}', tools) is None
    assert parse_tool_calls("hello", tools) is None
    buf = ToolCallBuffer(tools)
    assert buf.feed('  {"name": "f", ') == "" and buf.feed('"arguments": {}}') == ""
    assert buf.finish() == ("", [{"function": {"name": "f", "arguments": {}}}])
    plain = ToolCallBuffer(tools)
    assert plain.feed("Hi") == "Hi" and plain.finish() == ("", None)
    assert l2_normalize([3.0, 4.0]) == [0.6, 0.8] and l2_normalize([3.0, 4.0, 9.0], 2) == [0.6, 0.8]
