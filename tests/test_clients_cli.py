"""The two coding CLIs from npm as judges, run non-interactively against `python app.py`: Claude Code
(`claude -p`, Anthropic Messages at ANTHROPIC_BASE_URL) and Codex (`codex exec`, a custom provider
with `wire_api = "responses"`), each in front of a scripted Ollama (tests/fake_ollama.py) and through
a paired GPU node. They are pinned in tests/js/package-lock.json; `bash tests/run.sh` installs them
(`npm ci`) into tests/js/node_modules.

Each run gets a fresh HOME (and CODEX_HOME) and only PATH, HOME and TERM from outside, so it is
offline: Claude Code with CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1, Codex with analytics, plugins
and the update check off (what /work/research found makes both send nothing but the one API call).
CLAUDE_CODE_MAX_OUTPUT_TOKENS=8 keeps Claude Code's `max_tokens` (32000 otherwise) from making the
scripted Ollama stream 32000 chunks.

Not against the in-box engine: Claude Code's request is ~76 KB (24 tools) and Codex's ~40 KB; on 2
cores Gemma 3 270M takes 10-60 s for each of their prompts, Claude Code treats the base model's
`max_tokens` stop as an error, and Codex sets no output limit (a run took over 5 minutes). The
in-box engine is judged by the SDKs (tests/test_clients_anthropic.py, tests/test_clients_ollama.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from tests.procs import ROOT
from tests.relay_support import control, fake_ollama, gateway, node, pair, save_credential

BIN = ROOT / "tests" / "js" / "node_modules" / ".bin"
TOK8 = "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"
TOK5 = "tok0 tok1 tok2 tok3 tok4"
# The tools Claude Code 2.1.197 offers in `-p` mode (clients.md), alphabetical.
CLAUDE_TOOLS = {"Agent", "Bash", "Edit", "Read", "Write", "WebFetch", "WebSearch", "TaskCreate", "Skill"}


def binary(name: str) -> Path:
    path = BIN / name
    if not path.exists():  # never a skip: CI must have them (tests/run.sh installs them)
        pytest.fail(f"{path} is missing: run `bash tests/run.sh` (npm ci in tests/js)")
    return path


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    seconds: float


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> Run:
    started = time.monotonic()
    proc = subprocess.run(argv, env={"PATH": os.environ["PATH"], "TERM": "dumb", **env}, cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    took = time.monotonic() - started
    print(f"{Path(argv[0]).name} {' '.join(argv[1:3])}: rc {proc.returncode} in {took:.1f}s")
    return Run(proc.returncode, proc.stdout, proc.stderr, took)


def claude(home: Path, base: str, model: str, *args: str, prompt: str = "say hi", api_key: str | None = None) -> Run:
    """`claude -p`; with `api_key` as ANTHROPIC_API_KEY (sent as x-api-key), else a made-up
    ANTHROPIC_AUTH_TOKEN (sent as Authorization: Bearer)."""
    home.mkdir(parents=True, exist_ok=True)
    auth = {"ANTHROPIC_API_KEY": api_key} if api_key else {"ANTHROPIC_AUTH_TOKEN": "x"}
    env = {"HOME": str(home), "ANTHROPIC_BASE_URL": base, **auth, "ANTHROPIC_MODEL": model,
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "8"}
    return run([str(binary("claude")), "-p", prompt, *args], env, home)


def codex(home: Path, base: str, model: str, *args: str, extra: str = "", prompt: str = "say hi",
          api_key: str | None = None) -> Run:
    """`codex exec` with a custom `responses` provider; with `api_key`, the provider's `env_key`
    (sent as Authorization: Bearer), else none (Codex then sends no Authorization)."""
    codex_home, work = home / "codex", home / "work"
    codex_home.mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(f'''model = "{model}"
model_provider = "ollabridge"
check_for_update_on_startup = false
{extra}

[analytics]
enabled = false

[features]
plugins = false

[model_providers.ollabridge]
name = "OllaBridge"
base_url = "{base}"
wire_api = "responses"
{'env_key = "OLLABRIDGE_API_KEY"' if api_key else ""}
''')
    env = {"HOME": str(home), "CODEX_HOME": str(codex_home), **({"OLLABRIDGE_API_KEY": api_key} if api_key else {})}
    return run([str(binary("codex")), "exec", "--skip-git-repo-check", *args, prompt], env, work)


def script(up: str, **settings) -> None:
    """A fresh script for the scripted Ollama: calls the first tool (unless told), no bodies kept."""
    control(up, **{"call_tools": True, "tool_args": None, "tool": None, "reset_bodies": True, **settings})


def bodies(up: str) -> list[dict]:
    return [b["body"] for b in httpx.get(f"{up}/_bodies").json()["bodies"] if b["op"] == "chat"]


def ok(result: Run, text: str) -> None:
    assert result.rc == 0, f"rc {result.rc}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-3000:]}"
    assert result.stdout.strip() == text, result.stdout[-2000:]


@pytest.fixture(scope="module")
def scripted(out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = out_dir / "clients-cli"
    logs.mkdir(exist_ok=True)
    with fake_ollama(logs, "qwen-fake:latest,deep-think:latest") as up, \
            gateway(logs, tmp_path_factory.mktemp("cli"), up,
                    OLLABRIDGE_MODEL_ALIASES="claude-*=qwen-fake:latest,gpt-*=deep-think:latest") as gw:
        yield SimpleNamespace(up=up, gw=gw)


# -- Claude Code ------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["/ollama", ""], ids=["ollama-prefix", "gateway-root"])
def test_claude_code_says_hi(scripted, tmp_path, prefix):
    script(scripted.up, call_tools=False)
    result = claude(tmp_path / "home", scripted.gw + prefix, "qwen-fake")
    ok(result, TOK8)
    [*relaxed, last] = bodies(scripted.up)
    # Claude Code's whole request went through: 24 tools, its system prompt without the billing
    # header, its mid-conversation system message, max_tokens as num_predict ...
    assert len(last["tools"]) == 24 and CLAUDE_TOOLS <= {t["function"]["name"] for t in last["tools"]}
    roles = [m["role"] for m in last["messages"]]
    assert roles == ["system", "user", "system"], roles
    assert last["messages"][0]["content"].startswith("You are a Claude agent")
    assert not any("x-anthropic-billing-header" in (m.get("content") or "") for m in last["messages"])
    assert "say hi" in last["messages"][1]["content"] and last["options"]["num_predict"] == 8
    # ... and its `thinking: adaptive` + effort "high" did not cost the answer on a model that cannot think.
    assert "think" not in last
    assert [b.get("think") for b in relaxed] in ([], ["high"])


def test_claude_code_aliased_model_and_thinking_model(scripted, tmp_path):
    script(scripted.up, call_tools=False)
    result = claude(tmp_path / "a", scripted.gw + "/ollama", "claude-sonnet-4-5", "--output-format", "stream-json",
                    "--verbose")
    assert result.rc == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    said = [e["message"] for e in events if e["type"] == "assistant"]
    assert [m["model"] for m in said] == ["qwen-fake:latest"]  # the answer names the model that served
    assert said[0]["content"] == [{"type": "text", "text": TOK8 + " "}]
    assert events[-1]["type"] == "result" and events[-1]["result"].strip() == TOK8
    assert {b["model"] for b in bodies(scripted.up)} == {"qwen-fake:latest"}

    # A model that thinks gets Claude Code's effort as `think`, and its thinking comes back as a block.
    script(scripted.up, call_tools=False)
    result = claude(tmp_path / "t", scripted.gw + "/ollama", "deep-think", "--output-format", "stream-json",
                    "--verbose")
    assert result.rc == 0, result.stderr
    blocks = [b for e in map(json.loads, result.stdout.splitlines()) if e["type"] == "assistant"
              for b in e["message"]["content"]]
    assert blocks[0]["type"] == "thinking" and blocks[0]["thinking"] == "hmm "
    assert blocks[-1] == {"type": "text", "text": TOK8 + " "}
    assert [b.get("think") for b in bodies(scripted.up)] == ["high"]


def test_claude_code_runs_a_tool_and_sends_its_result_back(scripted, tmp_path):
    script(scripted.up, tool_args={"command": "echo cc-tool-ran-42", "description": "Echo a marker"})
    result = claude(tmp_path / "home", scripted.gw + "/ollama", "qwen-fake", "--tools", "Bash",
                    "--allowedTools", "Bash(echo:*)")
    ok(result, TOK8)
    asked = [b for b in bodies(scripted.up) if "think" not in b]  # without the relaxed first tries
    assert len(asked) == 2 and [t["function"]["name"] for t in asked[0]["tools"]] == ["Bash"]
    *_, call, answer = asked[1]["messages"]
    [tool_call] = call["tool_calls"]
    assert call["role"] == "assistant" and tool_call["function"] == {
        "name": "Bash", "arguments": {"command": "echo cc-tool-ran-42", "description": "Echo a marker"}}
    # Claude Code ran `echo` and its output came back as Ollama's tool message, tied to the call.
    assert answer == {"role": "tool", "content": "cc-tool-ran-42", "tool_call_id": tool_call["id"],
                      "tool_name": "Bash"}


# -- Codex ------------------------------------------------------------------------------------------

def test_codex_exec_says_hi(scripted, tmp_path):
    script(scripted.up, call_tools=False)
    result = codex(tmp_path, scripted.gw + "/ollama/v1", "qwen-fake")
    ok(result, TOK5)
    assert "tokens used" in result.stderr  # from response.completed's usage
    [body] = bodies(scripted.up)
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "system", "user", "user"], roles  # its `developer` prompt as system
    assert body["messages"][0]["content"].startswith("You are a coding agent running in the Codex CLI")
    assert body["messages"][-1]["content"] == "say hi"
    names = [t["function"]["name"] for t in body["tools"]]
    assert names[0] == "exec_command" and "multi_agent_v1.wait_agent" in names
    assert not any("web_search" in n for n in names)  # Ollama would search the web for it


def test_codex_runs_a_command_and_a_namespaced_tool(scripted, tmp_path):
    script(scripted.up, tool_args={"cmd": "echo codex-tool-ran-42"})
    result = codex(tmp_path / "exec", scripted.gw + "/ollama/v1", "qwen-fake")
    ok(result, TOK5)
    assert "codex-tool-ran-42" in result.stderr  # Codex shows the command it ran and its output
    first, second = bodies(scripted.up)
    *_, call, answer = second["messages"]
    assert call["tool_calls"][0]["function"] == {"name": "exec_command", "arguments": {"cmd": "echo codex-tool-ran-42"}}
    assert answer["role"] == "tool" and answer["tool_name"] == "exec_command"
    assert answer["tool_call_id"] == call["tool_calls"][0]["id"]
    assert answer["content"].rstrip().endswith("Output:\ncodex-tool-ran-42")

    # A call to a tool inside a namespace reaches Codex's own tool (not "unsupported call").
    script(scripted.up, tool="multi_agent_v1.wait_agent", tool_args={"targets": [], "timeout_ms": 10})
    result = codex(tmp_path / "ns", scripted.gw + "/ollama/v1", "qwen-fake")
    ok(result, TOK5)
    *_, call, answer = bodies(scripted.up)[-1]["messages"]
    assert call["tool_calls"][0]["function"]["name"] == "multi_agent_v1.wait_agent"
    assert answer["content"] == "agent ids must be non-empty", answer


def test_codex_aliased_model_with_reasoning(scripted, tmp_path):
    script(scripted.up, call_tools=False)
    result = codex(tmp_path, scripted.gw + "/ollama/v1", "gpt-5.1-codex", "--json",
                   extra='model_reasoning_effort = "low"')
    assert result.rc == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    items = [e["item"] for e in events if e["type"] == "item.completed"]
    assert [i["text"] for i in items if i["type"] == "agent_message"] == [TOK5 + " "]
    assert any(i["type"] == "reasoning" and "hmm" in i["text"] for i in items), items
    assert events[-1]["type"] == "turn.completed" and events[-1]["usage"]["output_tokens"] == 5
    [body] = bodies(scripted.up)
    assert body["model"] == "deep-think:latest" and body["think"] == "low"


# -- through a GPU node -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def relay(out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A gateway with an API key, whose own Ollama has `cpu-only`, and a paired node agent whose
    Ollama has `gpu-coder`."""
    logs = out_dir / "clients-cli"
    logs.mkdir(exist_ok=True)
    tmp = tmp_path_factory.mktemp("cli-relay")
    with ExitStack() as stack:
        cpu = stack.enter_context(fake_ollama(logs, "cpu-only:latest"))
        gpu = stack.enter_context(fake_ollama(logs, "gpu-coder:latest"))
        gw = stack.enter_context(gateway(logs, tmp / "data", cpu, OLLABRIDGE_API_KEYS="sk-cli-key"))
        creds = tmp / "creds.json"
        save_credential(creds, gw, pair(gw, "cli-node"))
        stack.enter_context(node(logs, gw, gpu, creds, "cli-node"))
        yield SimpleNamespace(cpu=cpu, gpu=gpu, gw=gw)


def test_claude_code_and_codex_through_a_node_with_an_api_key(relay, tmp_path):
    script(relay.gpu, call_tools=False)
    script(relay.cpu)
    ok(claude(tmp_path / "claude", relay.gw + "/ollama", "gpu-coder", api_key="sk-cli-key"), TOK8)
    served = bodies(relay.gpu)
    assert served and len(served[-1]["tools"]) == 24 and "think" not in served[-1]
    # A wrong key is said at once (without X-Should-Retry: false Claude Code retried it for minutes).
    refused = claude(tmp_path / "claude-wrong", relay.gw + "/ollama", "gpu-coder", api_key="sk-wrong")
    assert refused.rc == 1 and "401 That API key is not valid" in refused.stdout, refused
    assert refused.seconds < 60

    script(relay.gpu, tool_args={"cmd": "echo via-node-42"})
    result = codex(tmp_path / "codex", relay.gw + "/ollama/v1", "gpu-coder", api_key="sk-cli-key")
    ok(result, TOK5)
    *_, answer = bodies(relay.gpu)[-1]["messages"]
    assert answer["role"] == "tool" and "via-node-42" in answer["content"]
    assert bodies(relay.cpu) == []  # the node served it all
    keyless = codex(tmp_path / "codex-none", relay.gw + "/ollama/v1", "gpu-coder")
    assert keyless.rc == 1 and "401" in keyless.stderr and keyless.seconds < 60, keyless
