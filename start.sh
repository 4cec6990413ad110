#!/usr/bin/env bash
# OllaBridge's entry point (the Space runs it; it works the same on any Linux box).
#
# * With an `ollama` binary on PATH: starts `ollama serve`, waits until it answers (at most
#   OLLABRIDGE_OLLAMA_WAIT seconds, default 60), then starts the gateway at once. The gateway pulls
#   OLLABRIDGE_MODELS (default here: qwen2.5:1.5b) in the background, with progress in the log and in
#   /health and /ollama/status, and serves the models already present meanwhile.
# * Without one: starts the gateway, which runs the in-box engine (OLLABRIDGE_ENGINE=auto).
# * SIGTERM/SIGINT are forwarded: the gateway stops first, then Ollama.
# * Exits non-zero with a plain message when Ollama dies at start or the gateway cannot start.
#
# Knobs (besides the gateway's own settings): OLLABRIDGE_OLLAMA_WAIT, PYTHON (interpreter to use).
set -u

cd "$(dirname "$0")" || exit 1

say() { echo "start.sh: $*" >&2; }

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if command -v python3 >/dev/null 2>&1; then PYTHON=python3; else PYTHON=python; fi
fi
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    say "no Python interpreter found (tried '$PYTHON'); install Python 3.11+ or set PYTHON"
    exit 1
fi

export GRADIO_ANALYTICS_ENABLED="${GRADIO_ANALYTICS_ENABLED:-False}"
export PYTHONUNBUFFERED=1
# The models the gateway pulls into Ollama after it starts; set it empty to pull nothing.
export OLLABRIDGE_MODELS="${OLLABRIDGE_MODELS-qwen2.5:1.5b}"
WAIT_S="${OLLABRIDGE_OLLAMA_WAIT:-60}"
# On a Space every request comes through Hugging Face's proxy, which appends the caller's address to
# X-Forwarded-For: trust that one hop, so rate limits apply per caller and not to the proxy.
if [ -n "${SPACE_HOST:-}" ]; then
    export OLLABRIDGE_FORWARDED_HOPS="${OLLABRIDGE_FORWARDED_HOPS:-1}"
fi

# One address for both sides: OLLAMA_HOST (what `ollama serve` binds) and OLLAMA_BASE_URL (what the
# gateway dials). Either one may be given; the default is Ollama's own 127.0.0.1:11434.
if [ -z "${OLLAMA_BASE_URL:-}" ]; then
    hostport="${OLLAMA_HOST:-127.0.0.1:11434}"
    hostport="${hostport#*://}"
    case "$hostport" in 0.0.0.0:*) hostport="127.0.0.1:${hostport#*:}" ;; esac
    export OLLAMA_BASE_URL="http://${hostport%%/*}"
fi
if [ -z "${OLLAMA_HOST:-}" ]; then
    hostport="${OLLAMA_BASE_URL#*://}"
    export OLLAMA_HOST="${hostport%%/*}"
fi
# Keep pulled models on the Space's persistent storage when it is attached.
if [ -z "${OLLAMA_MODELS:-}" ] && [ -d /data ] && [ -w /data ]; then
    export OLLAMA_MODELS=/data/ollama/models
fi

ollama_pid=""
gw_pid=""
waiter_pid=""
stopping=0

stop_ollama() {
    [ -n "$ollama_pid" ] || return 0
    if kill -0 "$ollama_pid" 2>/dev/null; then
        kill -TERM "$ollama_pid" 2>/dev/null
        for _ in $(seq 1 100); do  # up to 10 s, then kill
            kill -0 "$ollama_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$ollama_pid" 2>/dev/null
    fi
    wait "$ollama_pid" 2>/dev/null
    ollama_pid=""
}

on_signal() {
    stopping=1
    if [ -n "$gw_pid" ]; then
        say "stopping the gateway"
        kill -TERM "$gw_pid" 2>/dev/null
    else
        [ -n "$waiter_pid" ] && kill -TERM "$waiter_pid" 2>/dev/null
        stop_ollama
        say "stopped before the gateway started"
        exit 143
    fi
}
trap on_signal TERM INT

if command -v ollama >/dev/null 2>&1; then
    say "starting 'ollama serve' on $OLLAMA_HOST"
    ollama serve &
    ollama_pid=$!
    # Wait (bounded) until Ollama answers /api/version, or until it dies.
    "$PYTHON" - "$OLLAMA_BASE_URL" "$WAIT_S" "$ollama_pid" <<'EOF' &
import os, sys, time, urllib.request
url, limit, pid = sys.argv[1].rstrip("/") + "/api/version", float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(2)
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
EOF
    waiter_pid=$!
    wait "$waiter_pid"
    rc=$?
    waiter_pid=""
    case $rc in
        0) say "Ollama answers at $OLLAMA_BASE_URL" ;;
        2)
            wait "$ollama_pid"
            say "'ollama serve' exited with code $? before it answered; see its messages above"
            exit 1 ;;
        *)
            say "Ollama did not answer at $OLLAMA_BASE_URL within ${WAIT_S}s; starting the gateway anyway" \
                "(it shows Ollama as unreachable until it answers; raise OLLABRIDGE_OLLAMA_WAIT if it is just slow)"
            # Keep dialling this Ollama rather than starting the in-box engine on its port.
            [ "${OLLABRIDGE_ENGINE:-auto}" = auto ] && export OLLABRIDGE_ENGINE=ollama ;;
    esac
else
    say "no 'ollama' binary on PATH; the gateway uses the in-box engine (OLLABRIDGE_ENGINE=${OLLABRIDGE_ENGINE:-auto})"
fi

say "starting the gateway on ${HOST:-0.0.0.0}:${PORT:-7860}${OLLABRIDGE_MODELS:+ (pulling in the background: $OLLABRIDGE_MODELS)}"
"$PYTHON" app.py &
gw_pid=$!

# `wait` returns early when a signal arrives; keep waiting until the gateway has really exited,
# then ask once more for its own exit status (bash keeps it).
while kill -0 "$gw_pid" 2>/dev/null; do
    wait "$gw_pid"
done
wait "$gw_pid"
rc=$?
gw_pid=""
stop_ollama

if [ "$stopping" = 1 ]; then
    # uvicorn re-raises the signal it stopped on: 143 (TERM) or 130 (INT) is a clean stop here.
    case $rc in 0|130|143) say "stopped"; exit 0 ;; esac
    say "stopped (the gateway exited with code $rc)"
    exit "$rc"
fi
if [ "$rc" -ne 0 ]; then
    say "the gateway could not start or stopped unexpectedly (exit code $rc); see its messages above"
    exit "$rc"
fi
say "the gateway exited"
exit 0
