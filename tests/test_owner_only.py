"""A public gateway only its owner controls: no guessing of admin tokens, API keys or device codes (per
client address, as a proxy in front reports it), and nothing secret on open routes. Real gateway
processes behind a make-believe proxy (OLLABRIDGE_FORWARDED_HOPS=1: each test's callers are told apart by
the X-Forwarded-For entry a proxy appends), asked by real clients (httpx, the openai SDK)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from tests.procs import ROOT, free_port, running
from tests.relay_support import ADMIN, AUTH, fake_ollama, gateway, gateway_env, wait_until
from tests.ui_helpers import CHROMIUM, launch, open_tab

KEY = "sk-the-right-key"
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def env(out_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = out_dir / "owner-only"
    logs.mkdir(exist_ok=True)
    tmp = tmp_path_factory.mktemp("owner-only")
    with fake_ollama(logs, "a:latest") as upstream, \
            gateway(logs, tmp / "data", upstream, OLLABRIDGE_API_KEYS=KEY, OLLABRIDGE_FORWARDED_HOPS="1",
                    OLLABRIDGE_DEVICE_RATE="2") as gw:
        yield SimpleNamespace(gw=gw, logs=logs, tmp=tmp, upstream=upstream)


def via(address: str, **headers: str) -> dict[str, str]:
    """Headers of a request the proxy forwarded from `address` (what the caller wrote itself comes first)."""
    return {"X-Forwarded-For": f"198.51.100.99, {address}", **headers}


def sdk(env, address: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{env.gw}/v1", api_key=key, max_retries=0, timeout=30,
                         default_headers={"X-Forwarded-For": address})


# -- point 4: no guessing --------------------------------------------------------------------------
def test_wrong_api_keys_lock_the_address_out_and_no_one_else(env):
    guesser = "203.0.113.1"
    for i in range(10):
        with pytest.raises(openai.AuthenticationError):
            sdk(env, guesser, f"sk-guess-{i}").models.list()
    with pytest.raises(openai.RateLimitError) as locked:
        sdk(env, guesser, "sk-guess-10").models.list()
    assert int(locked.value.response.headers["retry-after"]) >= 50  # the first lock-out: a minute
    assert locked.value.body["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError):  # the right key too: a lock-out tells nothing
        sdk(env, guesser, KEY).chat.completions.create(model="a", messages=MSG)
    native = httpx.get(f"{env.gw}/ollama/api/tags", headers=via(guesser, **{"X-API-Key": "sk-guess-11"}))
    assert native.status_code == 429 and isinstance(native.json()["error"], str)
    # Another address, behind the same proxy, is not touched: its right key works, a wrong one is a 401.
    assert sdk(env, "203.0.113.2", KEY).chat.completions.create(model="a", messages=MSG).choices
    with pytest.raises(openai.AuthenticationError):
        sdk(env, "203.0.113.2", "sk-typo").models.list()
    assert 'ollabridge_rate_limited_total{limit="guesses",scope="ip"}' in httpx.get(f"{env.gw}/metrics").text


def test_wrong_admin_tokens_count_together_on_every_route_and_with_api_keys(env):
    guesser, wrong = "203.0.113.10", {"Authorization": "Bearer not-the-admin-token"}
    flow = httpx.post(f"{env.gw}/device/start", headers=via("203.0.113.11")).json()
    tries = [httpx.get(f"{env.gw}/admin/keys", headers=via(guesser, **wrong)),
             httpx.post(f"{env.gw}/admin/keys", json={"name": "x"}, headers=via(guesser, **wrong)),
             httpx.post(f"{env.gw}/device/approve", json={"user_code": flow["user_code"]}, headers=via(guesser, **wrong)),
             httpx.post(f"{env.gw}/device/deny", json={"user_code": flow["user_code"]}, headers=via(guesser, **wrong)),
             httpx.get(f"{env.gw}/device/lookup", params={"user_code": flow["user_code"]},
                       headers=via(guesser, **wrong)),
             httpx.delete(f"{env.gw}/device/nodes/node_x", headers=via(guesser, **wrong))]
    tries += [httpx.get(f"{env.gw}/v1/models", headers=via(guesser, Authorization=f"Bearer sk-{i}")) for i in range(4)]
    assert [r.status_code for r in tries] == [401] * 10
    locked = httpx.get(f"{env.gw}/admin/keys", headers=via(guesser, **AUTH))  # the right token, too late
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 50
    assert "wrong" in locked.json()["error"]
    assert httpx.post(f"{env.gw}/device/approve", json={"user_code": flow["user_code"]},
                      headers=via(guesser, **AUTH)).status_code == 429
    # The owner, from elsewhere, is not locked out by someone else's guessing.
    assert httpx.get(f"{env.gw}/admin/keys", headers=via("203.0.113.12", **AUTH)).status_code == 200
    assert httpx.post(f"{env.gw}/device/approve", json={"user_code": flow["user_code"]},
                      headers=via("203.0.113.12", **AUTH)).status_code == 200
    # A missing token is no guess.
    assert [httpx.get(f"{env.gw}/admin/keys", headers=via("203.0.113.13")).status_code
            for _ in range(12)] == [401] * 12


def test_each_lock_out_lasts_twice_as_long(tmp_path, env):
    with gateway(env.logs, tmp_path / "data", env.upstream, OLLABRIDGE_FORWARDED_HOPS="1",
                 OLLABRIDGE_GUESS_LIMIT="3", OLLABRIDGE_GUESS_LOCKOUT="1") as gw:
        guesser = via("203.0.113.20", Authorization="Bearer wrong")
        right = via("203.0.113.20", **AUTH)
        waits = []
        for _ in range(3):
            assert [httpx.get(f"{gw}/admin/keys", headers=guesser).status_code for _ in range(3)] == [401] * 3
            locked = httpx.get(f"{gw}/admin/keys", headers=right)
            assert locked.status_code == 429
            waits.append(int(locked.headers["retry-after"]))
            wait_until(lambda: httpx.get(f"{gw}/admin/keys", headers=right).status_code == 200, 10,
                       "the lock-out to end")
        assert waits == [1, 2, 4]


def test_pairing_limits_count_the_caller_not_the_proxy(env):
    """/device/start's limit (OLLABRIDGE_DEVICE_RATE=2 here) and /device/token's wrong codes use the
    API's client address: one script behind the proxy no longer blocks pairing for everyone."""
    script, node = "203.0.113.30", "203.0.113.31"
    assert [httpx.post(f"{env.gw}/device/start", headers=via(script)).status_code for _ in range(3)] == [200, 200, 429]
    flow = httpx.post(f"{env.gw}/device/start", json={"name": "real-node"}, headers=via(node))
    assert flow.status_code == 200
    looked = httpx.get(f"{env.gw}/device/lookup", params={"user_code": flow.json()["user_code"]},
                       headers=via("203.0.113.32", **AUTH)).json()
    assert looked["client"] == node  # what the owner sees: the node's address, not the proxy's
    forged = [httpx.post(f"{env.gw}/device/token", json={"device_code": f"forged-{i}"}, headers=via(script))
              for i in range(11)]
    assert [r.status_code for r in forged] == [400] * 10 + [429]
    assert forged[0].json()["error"] == "invalid_grant" and int(forged[-1].headers["retry-after"]) >= 50
    polled = httpx.post(f"{env.gw}/device/token", json={"device_code": flow.json()["device_code"]},
                        headers=via(node))
    assert polled.status_code == 400 and polled.json()["error"] == "authorization_pending"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")
def test_the_pair_tab_counts_wrong_admin_tokens_like_the_api(env, tmp_path):
    """In real Chromium: the web UI's admin token field is no way around the limit, and a browser behind
    the same proxy at another address is not locked out. Its Status tab shows no URL's credentials."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    with_secret = env.upstream.replace("http://", "http://admin:s3cret-pw@")
    with gateway(env.logs, tmp_path / "data", with_secret, port=port, OLLABRIDGE_UI="1",
                 OLLABRIDGE_FORWARDED_HOPS="1") as gw, sync_playwright() as p:
        code = httpx.post(f"{gw}/device/start", json={"name": "ui-node"}).json()["user_code"]
        browser = launch(p)
        try:
            def pair_tab(address: str):
                page = browser.new_context(extra_http_headers={"X-Forwarded-For": address}).new_page()
                page.set_default_timeout(30_000)
                page.goto(f"{gw}/?user_code={code}")  # opens the Pair tab with the code filled in
                page.wait_for_function("(c) => { const t = document.querySelector('#pair-code textarea');"
                                       " return t && t.value === c; }", arg=code)
                return page

            def lookup(page, user_code: str, token: str, expect: str) -> str:
                page.fill("#pair-code textarea", user_code)
                page.fill("#pair-token input", token)
                page.click("#pair-lookup")
                return wait_until(lambda: expect in (text := page.inner_text("#pair-result")) and text, 15,
                                  f"'{expect}' in the Pair tab")

            guesser = pair_tab("203.0.113.50")
            for i in range(10):
                lookup(guesser, code, f"wrong-{i}", "admin token is wrong")
                lookup(guesser, "", "", "Enter the code")  # a different message between two tries
            assert "try again in" in lookup(guesser, code, ADMIN, "Too many wrong")  # the right one, too late
            api = httpx.get(f"{gw}/admin/keys", headers={"X-Forwarded-For": "203.0.113.50", **AUTH})
            assert api.status_code == 429  # one count for the UI and the API
            owner = pair_tab("203.0.113.51")
            assert "ui-node" in lookup(owner, code, ADMIN, "is waiting for approval")
            open_tab(owner, "Status")
            wait_until(lambda: "***@127.0.0.1" in owner.inner_text("#status-html"), 15, "the engine's URL")
            assert "s3cret-pw" not in owner.content()
        finally:
            browser.close()


# -- point 5: nothing secret on open routes --------------------------------------------------------
def test_urls_on_open_routes_never_show_credentials(env, tmp_path):
    with_secret = env.upstream.replace("http://", "http://admin:s3cret-pw@")  # an Ollama behind basic auth
    with gateway(env.logs, tmp_path / "data", with_secret) as gw:
        reply = httpx.post(f"{gw}/v1/chat/completions", json={"model": "a", "messages": MSG})
        assert reply.status_code == 200  # it serves, with its credentials
        for route in ("/health", "/ollama/status"):
            text = httpx.get(f"{gw}{route}").text
            assert "s3cret-pw" not in text and "admin:" not in text, route
        redacted = env.upstream.replace("http://", "http://***@")
        assert httpx.get(f"{gw}/ollama/status").json()["ollama"]["url"] == redacted
        assert httpx.get(f"{gw}/health").json()["engine"]["url"] == redacted


def test_the_node_list_is_the_owners_and_open_routes_only_count_nodes(env):
    from tests.relay_support import RawNode, pair

    cred = pair(env.gw, "private-gpu")
    with RawNode(env.gw, cred["node_token"], name="private-gpu", models=("secret-model:latest",)):
        assert httpx.get(f"{env.gw}/device/nodes").status_code == 401
        assert httpx.get(f"{env.gw}/device/nodes", headers=via("203.0.113.60", Authorization="Bearer x")
                         ).status_code == 401
        listed = httpx.get(f"{env.gw}/device/nodes", headers=AUTH).json()["nodes"]
        assert [(n["name"], n["connected"]) for n in listed] == [("private-gpu", True)]
        relay = httpx.get(f"{env.gw}/ollama/status").json()["relay"]
        assert relay["nodes_connected"] == 1 and "nodes" not in relay
        health = httpx.get(f"{env.gw}/health").json()
        assert health["relay"]["nodes_connected"] == 1
        assert cred["node_id"] not in json.dumps(health) + json.dumps(relay)


def test_the_node_tarball_holds_exactly_the_agents_files(env, tmp_path):
    """A gateway run from a copy of the package with stray files in it (a token, a database, notes, a
    scratch module): the tarball has none of them, only tracked agent modules, and the agent runs from it."""
    app = tmp_path / "app"
    shutil.copytree(ROOT / "ollabridge", app / "ollabridge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "app.py", app / "app.py")
    strays = {"ollabridge/admin_token": "the-admin-token\n", "ollabridge/data/ollabridge.db": "SQLite format 3",
              "ollabridge/.env": "OLLABRIDGE_ADMIN_TOKEN=x\n", "ollabridge/node/notes.txt": "my HF token: hf_x\n",
              "ollabridge/node/scratch.py": "TOKEN = 'hf_x'\n", "ollabridge/relay/protocol.py.orig": "old\n"}
    for name, text in strays.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    port = free_port()
    with running([str(app / "app.py")], f"http://127.0.0.1:{port}/health", log=env.logs / f"gateway-{port}.log",
                 env=gateway_env(tmp_path / "data", port, env.upstream)):
        archive = httpx.get(f"http://127.0.0.1:{port}/node/ollabridge.tar.gz").content
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "agent", filter="data")
    tracked = set(subprocess.run(["git", "ls-files", "ollabridge"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split())
    assert names <= tracked and not names & set(strays), names - tracked
    assert {"ollabridge/__main__.py", "ollabridge/node/session.py", "ollabridge/relay/protocol.py"} <= names
    assert "ollabridge/config.py" not in names and "ollabridge/pairing/store.py" not in names  # the gateway's
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in ("fastapi", "starlette", "pydantic", "gradio"))
    ran = subprocess.run([sys.executable, "-c", f"import sys; {blocked}; import runpy; sys.argv = ['ollabridge', "
                          "'node', '--help']; runpy.run_module('ollabridge', run_name='__main__')"],
                         cwd=tmp_path / "agent", capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and "--cloud" in ran.stdout, ran.stderr
