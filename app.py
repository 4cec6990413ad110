"""Entry point: `python app.py` serves the gateway on $HOST:$PORT (default 0.0.0.0:7860), as `ollabridge serve`."""

from __future__ import annotations

import sys

from ollabridge.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
