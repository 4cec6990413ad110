"""The package as a new user installs it: pyproject's ranges, the locks, the wheel, the console script.

The locks must satisfy pyproject's ranges and agree with each other; requirements.txt is pyproject's
dependency list; the wheel holds the `ollabridge` package alone and its `ollabridge serve` serves from
a fresh venv. (The installs here are offline, `--no-deps`; the networked installs are figure 8.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ollabridge import __version__
from ollabridge.__main__ import COMMANDS
from tests.procs import PY, ROOT, free_port, running

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# lock -> the extras it resolves (tools/refresh-locks.sh)
LOCKS = {"requirements.lock": (), "requirements-inbox.lock": ("inbox",), "requirements-dev.lock": ("inbox", "dev")}
ENV = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.7"}


def pins(lock: str) -> dict[str, str]:
    """name -> exact version, for the lock's lines that apply to Python 3.11 on this platform."""
    found = {}
    for line in (ROOT / lock).read_text().splitlines():
        line = line.split("  #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        req = Requirement(line)
        assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", f"{lock}: {line} is not exact"
        if req.marker is None or req.marker.evaluate(ENV):
            found[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    return found


def direct_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PYPROJECT["optional-dependencies"][extra]]
    return [r for r in reqs if canonicalize_name(r.name) != "ollabridge"]


@pytest.mark.parametrize("lock", LOCKS)
def test_each_lock_pins_every_requirement_within_pyprojects_range(lock):
    pinned = pins(lock)
    for req in direct_requirements(LOCKS[lock]):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{lock} lacks {req}"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{lock}: {name}=={pinned[name]} not in {req}"


def test_locks_are_one_resolution_and_the_gateway_lock_has_no_engine():
    dev = pins("requirements-dev.lock")
    for lock in ("requirements.lock", "requirements-inbox.lock"):
        differ = {name: (version, dev.get(name)) for name, version in pins(lock).items() if dev.get(name) != version}
        assert not differ, f"{lock} and requirements-dev.lock disagree: {differ}"
    assert "llama-cpp-python" not in pins("requirements.lock")  # the Space runs real Ollama
    assert {"gradio", "fastapi"} <= set(pins("requirements.lock"))


def test_requirements_txt_is_pyprojects_dependency_list():
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == PYPROJECT["dependencies"], "run: bash tools/refresh-locks.sh"


def test_the_node_agent_requires_what_pyproject_says():
    from ollabridge.node.package import AGENT_REQUIRES

    ranges = {canonicalize_name(r.name): r.specifier for r in direct_requirements(())}
    for req in map(Requirement, AGENT_REQUIRES):
        assert ranges[canonicalize_name(req.name)] == req.specifier, req


def test_the_version_is_written_in_one_place():
    assert "version" in PYPROJECT["dynamic"] and "version" not in PYPROJECT
    assert re.search(r'^__version__ = "[^"]+"$', (ROOT / "ollabridge" / "__init__.py").read_text(), re.M)


def test_every_command_has_help():
    listing = subprocess.run([PY, "-m", "ollabridge", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert listing.returncode == 0
    assert {"serve", "node", "engine", "space"} <= set(re.findall(r"\b\w+\b", listing.stdout))
    for name in COMMANDS:
        done = subprocess.run([PY, "-m", "ollabridge", name, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.startswith("usage: python -m ollabridge " + name), done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel .` offline (the build backend from this environment)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([PY, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    return next(out.glob("ollabridge-*.whl"))


def test_the_wheel_holds_the_package_alone_with_its_console_script(wheel):
    assert wheel.name == f"ollabridge-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = f"ollabridge-{__version__}.dist-info"
        metadata = zf.read(f"{info}/METADATA").decode()
        scripts = zf.read(f"{info}/entry_points.txt").decode()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"ollabridge", info}, tops  # no tests/, harness/, bench/, app.py
    tracked = set(subprocess.run(["git", "ls-files", "ollabridge"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split())
    assert {n for n in names if n.startswith("ollabridge/")} == tracked
    assert "ollabridge = ollabridge.__main__:main" in scripts
    assert "Requires-Dist: fastapi" in metadata and "Provides-Extra: inbox" in metadata
    assert "llama-cpp-python==0.3.36; extra == 'inbox'" in metadata.replace('"', "'")


def fresh_venv(path: Path, with_libraries_of_this_one: bool) -> Path:
    """A new venv without pip (this one's pip installs into it); optionally seeing this venv's libraries."""
    subprocess.run([PY, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    if with_libraries_of_this_one:
        site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        ours = [p for p in sys.path if p.endswith("site-packages")]
        Path(site, "this-venvs-libraries.pth").write_text("\n".join(ours) + "\n")
    return python


def pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "pip", "--python", str(python), *args], capture_output=True, text=True,
                          timeout=300, check=True)


def test_installed_wheel_serves_with_ollabridge_serve(wheel, tmp_path, out_dir):
    """`pip install ollabridge-*.whl` into a fresh venv (its libraries from this one): `ollabridge serve`
    runs the installed package, not the checkout, web UI included."""
    python = fresh_venv(tmp_path / "venv", with_libraries_of_this_one=True)
    pip(python, "install", "-q", "--no-deps", "--no-index", str(wheel))
    where = subprocess.run([str(python), "-c", "import ollabridge; print(ollabridge.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(tmp_path / "venv")), where
    script = tmp_path / "venv" / "bin" / "ollabridge"
    port = free_port()
    env = {"OLLABRIDGE_ENGINE": "ollama", "OLLAMA_BASE_URL": f"http://127.0.0.1:{free_port()}",
           "OLLABRIDGE_DATA_DIR": str(tmp_path / "data")}
    with running(["serve", "--host", "127.0.0.1", "--port", str(port)], f"http://127.0.0.1:{port}/health",
                 env=env, log=out_dir / "gateway-installed.log", program=str(script)):
        import httpx

        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["version"] == __version__
        page = httpx.get(f"http://127.0.0.1:{port}/", follow_redirects=True)
        assert page.status_code == 200 and "gradio" in page.text.lower()
        pip_list = json.loads(pip(python, "list", "--format", "json").stdout)
        assert [p["name"] for p in pip_list if p["name"] == "ollabridge"] == ["ollabridge"]


def libraries_dir(requirements: tuple[str, ...], dest: Path) -> Path:
    """A folder with exactly the import packages of `requirements` and their dependencies, linked from
    this venv: what `pip install` of them would bring (offline)."""
    from importlib.metadata import distribution

    todo, seen = [Requirement(r) for r in requirements], set()
    dest.mkdir()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({**ENV, "extra": ""})):
            continue
        seen.add(name)
        dist = distribution(name)
        todo += [Requirement(r) for r in dist.requires or []]
        for top in {f.parts[0] for f in dist.files or [] if not f.parts[0].endswith((".dist-info", "..", "bin"))}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (dest / top).exists():
                (dest / top).symlink_to(source)
    return dest


def test_node_installs_from_its_gateway_with_the_agents_dependencies_only(tmp_path, out_dir):
    """`pip install <gateway>/node/<wheel>` into a fresh venv: `ollabridge-node` alone, needing only
    httpx and websockets; `ollabridge node` runs with just those; the gateway's commands say what is missing.
    `pip install ./node` from the checkout builds the same wheel, byte for byte."""
    from ollabridge.node.package import AGENT_REQUIRES, wheel_name

    from tests.conftest import gateway_env

    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    with running(["app.py"], f"{gateway}/health", env=gateway_env(tmp_path / "gw", port),
                 log=out_dir / "gateway-node-wheel.log"):
        import httpx

        served = httpx.get(f"{gateway}/node/{wheel_name()}").content
        stale = httpx.get(f"{gateway}/node/ollabridge_node-0.0.1-py3-none-any.whl")
        python = fresh_venv(tmp_path / "venv", with_libraries_of_this_one=False)
        pip(python, "install", "-q", "--no-deps", "--no-index", f"{gateway}/node/{wheel_name()}")
    assert stale.status_code == 404 and wheel_name() in stale.json()["error"]

    installed = json.loads(pip(python, "list", "--format", "json").stdout)
    assert [p["name"] for p in installed] == ["ollabridge-node"]
    shown = pip(python, "show", "ollabridge-node").stdout
    assert re.search(r"^Requires: httpx, websockets$", shown, re.M), shown

    libraries = libraries_dir(AGENT_REQUIRES, tmp_path / "libs")
    assert not {"fastapi", "gradio", "pydantic", "starlette"} & {p.name for p in libraries.iterdir()}
    script = tmp_path / "venv" / "bin" / "ollabridge"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(libraries)}
    helped = subprocess.run([str(script), "node", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert helped.returncode == 0 and "--cloud" in helped.stdout, helped.stderr
    refused = subprocess.run([str(script), "serve"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "node-only install" in refused.stderr, refused.stderr

    built = tmp_path / "built"
    subprocess.run([PY, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "-w", str(built), str(ROOT / "node")],
                   check=True, capture_output=True, timeout=120)
    assert (built / wheel_name()).read_bytes() == served


def test_the_first_command_and_the_test_script_install_from_the_locks():
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"## Run it \(first command\)\s+```bash\n(.+?)\n```", readme, re.S).group(1)
    uv_pin = re.search(r"^(uv==\S+?)\s", (ROOT / "requirements-dev.lock").read_text(), re.M).group(1)
    assert f"pip install -q {uv_pin} " in first and "uv pip install -r requirements-inbox.lock -e ." in first
    assert "-DCMAKE_PROJECT_llama.cpp_INCLUDE=$PWD/tools/llama-cpp-lean.cmake" in first
    assert (ROOT / "tools" / "llama-cpp-lean.cmake").is_file()
    run_sh = (ROOT / "tests" / "run.sh").read_text()
    assert "uv pip install -q -r requirements-dev.lock -e ." in run_sh
    assert "bash tools/refresh-locks.sh" in readme  # how to refresh them
    from ollabridge.node.package import wheel_name

    assert f"/node/{wheel_name()}" in readme  # the node's one pip command names this version
