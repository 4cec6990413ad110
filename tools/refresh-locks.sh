#!/usr/bin/env bash
# Re-derive requirements.txt and the three locks from pyproject.toml, one consistent resolution:
#   requirements-dev.lock    the tests' set (`dev` extra, which includes `inbox`): tests/run.sh installs it
#   requirements-inbox.lock  the gateway with the in-box engine: the README's first command installs it
#   requirements.lock        the gateway alone: the Space image installs it
# The two smaller locks are compiled with the dev lock as constraint, so a package has one version in all.
# Existing pins are kept unless pyproject's ranges exclude them; pass uv's --upgrade (or
# --upgrade-package NAME) to move to newer releases. tests/test_packaging.py checks the result.
#   Usage: bash tools/refresh-locks.sh [--upgrade | --upgrade-package NAME ...]
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$(command -v uv || echo .venv/bin/uv)}
PY=${PYTHON:-python3}

"$PY" - <<'PYEOF'
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
with open("requirements.txt", "w") as out:
    out.write("# The gateway's dependencies, derived from pyproject.toml by tools/refresh-locks.sh (do not edit).\n"
              "# Exact versions: requirements.lock.\n")
    out.writelines(f"{dep}\n" for dep in deps)
PYEOF

compile() { "$UV" pip compile pyproject.toml --universal --python-version 3.11 --annotation-style line \
              --custom-compile-command "bash tools/refresh-locks.sh" -q "$@"; }
compile --extra dev -o requirements-dev.lock "$@"
compile --extra inbox -c requirements-dev.lock -o requirements-inbox.lock
compile -c requirements-dev.lock -o requirements.lock
echo "refreshed: requirements.txt requirements.lock requirements-inbox.lock requirements-dev.lock"
