"""Shared fixtures: the in-box engine and the gateway as real processes on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.procs import ROOT, free_port, running

OUT = ROOT / "test-output"


@pytest.fixture(scope="session")
def out_dir() -> Path:
    OUT.mkdir(exist_ok=True)
    return OUT


@pytest.fixture(scope="session")
def engine_url(out_dir: Path) -> str:
    """The real in-box engine (llama.cpp on Gemma 3 270M), one process for the whole run."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(["-m", "ollabridge.engine", "--host", "127.0.0.1", "--port", str(port)],
                 f"{url}/api/version", log=out_dir / "engine.log", timeout=300):
        yield url


def gateway_env(tmp: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment of a gateway process in tests: loopback, no UI unless asked."""
    return {"HOST": "127.0.0.1", "PORT": str(port), "OLLABRIDGE_ENGINE": "ollama", "OLLABRIDGE_UI": "0",
            "OLLABRIDGE_DATA_DIR": str(tmp), "OLLABRIDGE_ADMIN_TOKEN": "test-admin-token", **extra}


@pytest.fixture(scope="session")
def gateway_url(engine_url: str, out_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`python app.py` as a real process in front of the real in-box engine."""
    port = free_port()
    env = gateway_env(tmp_path_factory.mktemp("gateway"), port, OLLAMA_BASE_URL=engine_url)
    with running(["app.py"], f"http://127.0.0.1:{port}/health", env=env, log=out_dir / "gateway.log"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server on a free loopback port (harness/redis.py), one for the whole run."""
    from harness.redis import RedisServer
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def make_state(request: pytest.FixtureRequest, tmp_path: Path):
    """Makes the shared state (ollabridge/store) of each implementation over the same storage: a second
    one made is what a restart, or another replica, sees. Redis starts empty for each test."""
    from ollabridge.store import open_state
    made = []
    url = ""
    if request.param == "redis":
        import redis
        url = request.getfixturevalue("redis_server").url
        redis.Redis.from_url(url).flushdb()

    def make():
        made.append(open_state(tmp_path, url))
        return made[-1]
    make.kind = request.param
    yield make
    for state in made:
        state.close()
