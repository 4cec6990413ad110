"""Models from the Hugging Face Hub: `hf:<owner>/<repo>/<file>.gguf`, fetched once with progress.

The engine's `resolve_model` calls `download_gguf` for `hf:` specs (OLLABRIDGE_INBOX_MODEL). The file
lands in the data dir when there is one (OLLABRIDGE_DATA_DIR, or a Space's persistent /data), so it
survives restarts, and otherwise in the engine's cache dir:
`<dir>/models/hf/<owner>/<repo>/<file>`. A file already there is used as is, without asking the Hub.

The token is huggingface_hub's usual one (HF_TOKEN, or `hf auth login`); HF_ENDPOINT picks the Hub.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger("ollabridge.engine.hf_models")


class HubError(RuntimeError):
    """A Hub call failed; `str()` is a sentence for the user."""


def models_dir(cache_dir: Path) -> Path:
    """Where Hub files go: the data dir when there is one, else `cache_dir`."""
    data = os.environ.get("OLLABRIDGE_DATA_DIR")
    if not data and os.path.isdir("/data") and os.access("/data", os.W_OK):
        data = "/data"
    return Path(data or cache_dir) / "models" / "hf"


class _LogProgress(tqdm):
    """A tqdm that also logs a line every 10% (or 10 s), so progress shows in plain logs."""

    label = ""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("mininterval", 1.0)
        super().__init__(*args, **kwargs)
        self._last_pct = -10.0
        self._last_t = 0.0

    def update(self, n=1):
        out = super().update(n)
        total = self.total or 0
        pct = 100.0 * self.n / total if total else 0.0
        now = time.monotonic()
        if total and (pct - self._last_pct >= 10 or now - self._last_t >= 10 or self.n >= total):
            self._last_pct, self._last_t = pct, now
            log.info("downloading %s: %.0f%% of %.0f MB", self.label or self.desc or "file", pct, total / 1e6)
        return out


def download_gguf(repo_id: str, filename: str, cache_dir: Path) -> Path:
    """Fetch `filename` of model repo `repo_id` once; return its local path."""
    dest = models_dir(Path(cache_dir)) / repo_id
    target = dest / filename
    if target.is_file():
        log.info("hf:%s/%s is already downloaded (%s)", repo_id, filename, target)
        return target
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.utils import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                       LocalEntryNotFoundError, RepositoryNotFoundError)

    spec = f"hf:{repo_id}/{filename}"
    token_hint = ("set HF_TOKEN to a token that can read it (https://huggingface.co/settings/tokens)"
                  if not os.environ.get("HF_TOKEN") else "check that HF_TOKEN is valid and can read it")
    log.info("downloading %s from %s into %s", spec, constants.ENDPOINT, dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        extra = {}
        if "tqdm_class" in inspect.signature(hf_hub_download).parameters:  # huggingface_hub >= 1.0
            extra["tqdm_class"] = type("Progress", (_LogProgress,), {"label": spec})
        path = hf_hub_download(repo_id, filename, local_dir=dest, **extra)
    except GatedRepoError as exc:
        raise HubError(f"{spec}: {repo_id} is gated; accept its terms on the Hub, then {token_hint}") from exc
    except RepositoryNotFoundError as exc:
        raise HubError(f"{spec}: no repository {repo_id} on the Hub, or it is private and the token was "
                       f"missing or refused; {token_hint}") from exc
    except LocalEntryNotFoundError as exc:  # (a subclass of EntryNotFoundError: keep it first)
        raise HubError(f"{spec}: cannot reach the Hub at {constants.ENDPOINT} ({exc.__cause__ or exc}); "
                       "download the GGUF yourself and set OLLABRIDGE_INBOX_MODEL to its path") from exc
    except EntryNotFoundError as exc:
        raise HubError(f"{spec}: {repo_id} has no file {filename}") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            raise HubError(f"{spec}: the Hub refused the download (HTTP {status}); {token_hint}") from exc
        raise HubError(f"{spec}: the Hub answered HTTP {status}: {exc}") from exc
    log.info("downloaded %s (%.0f MB)", spec, Path(path).stat().st_size / 1e6)
    return Path(path)
