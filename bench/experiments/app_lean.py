"""`python app.py` with the lean_chat experiment installed (see lean_chat.py)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import lean_chat  # noqa: E402

lean_chat.install()

import app  # noqa: E402

app.main()
