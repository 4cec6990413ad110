#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, then run them all.
# Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

# Debian packages a fresh bookworm machine may lack, each only when what it brings is missing:
# Chromium for the browser tests (never `playwright install`: it downloads its own build), Node for
# tests/js/seed_example.mjs, a C/C++ toolchain for llama-cpp-python's build, venv for the .venv,
# buildah and debootstrap (with Debian's archive keys) for tests/test_space_image.py, which builds and
# boots the Space image without a Docker engine; redis-server and HAProxy for the shared-state and
# replica tests (harness/redis.py and harness/haproxy.py start their own on loopback).
apt_pkgs=()
command -v redis-server >/dev/null || apt_pkgs+=(redis-server)
{ command -v haproxy || [ -x /usr/sbin/haproxy ]; } >/dev/null || apt_pkgs+=(haproxy)
[ -x /usr/bin/chromium ] || apt_pkgs+=(chromium)
command -v node >/dev/null || apt_pkgs+=(nodejs)
command -v npm >/dev/null || apt_pkgs+=(npm)
{ command -v gcc && command -v g++ && command -v make; } >/dev/null || apt_pkgs+=(build-essential)
command -v buildah >/dev/null || apt_pkgs+=(buildah)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || apt_pkgs+=(debootstrap)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || apt_pkgs+=(debian-archive-keyring)
[ -x .venv/bin/python ] || "$PY" -c "import ensurepip, venv" 2>/dev/null || apt_pkgs+=(python3-venv)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  echo "== installing ${apt_pkgs[*]} (Debian packages)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# The tests' set, exact versions from requirements-dev.lock (tools/refresh-locks.sh), installed by uv
# (pinned in that lock too), and the package itself, editable. llama-cpp-python builds from source once;
# uv caches the wheel (~/.cache/uv), so later runs take seconds.
uv_pin=$(sed -n 's/^\(uv==[^ ;]*\).*/\1/p' requirements-dev.lock)
echo "== installing requirements-dev.lock with $uv_pin (a first run builds llama-cpp-python: minutes)"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
python -m pip install -q "$uv_pin"
# Without the two libraries llama-cpp-python's Python code never loads (tools/llama-cpp-lean.cmake).
export CMAKE_ARGS=${CMAKE_ARGS:-"-DLLAVA_BUILD=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=$PWD/tools/llama-cpp-lean.cmake"}
python -m uv pip install -q -r requirements-dev.lock -e .

# The CLIs the client tests run (Claude Code, Codex), pinned by tests/js/package-lock.json: `npm ci`
# into tests/js/node_modules only when it is missing or the lock changed since the last install.
lock_sum=$(sha256sum tests/js/package-lock.json | cut -d' ' -f1)
if [ "$(cat tests/js/node_modules/.lock-sha256 2>/dev/null)" != "$lock_sum" ]; then
  echo "== installing tests/js/package-lock.json (npm ci: Claude Code and Codex)"
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$lock_sum" > tests/js/node_modules/.lock-sha256
fi

export GRADIO_ANALYTICS_ENABLED=False
echo "== running the tests"
python -m pytest "$@"
