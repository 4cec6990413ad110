"""Settings, read from environment variables (each one is listed in the README's table)."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _default_data_dir() -> str:
    # A Space with persistent storage mounts /data; everywhere else keep state beside the app.
    return "/data" if os.path.isdir("/data") and os.access("/data", os.W_OK) else "./data"


class Settings(BaseSettings):
    """Every knob of the gateway. Field names map to env vars through their alias."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore")

    host: str = Field("0.0.0.0", validation_alias="HOST")
    port: int = Field(7860, validation_alias="PORT")
    ollama_base_url: str = Field("http://127.0.0.1:11434", validation_alias="OLLAMA_BASE_URL")
    upstreams_raw: str = Field("", validation_alias="OLLABRIDGE_UPSTREAMS")
    engine: Literal["auto", "ollama", "inbox"] = Field("auto", validation_alias="OLLABRIDGE_ENGINE")
    inbox_model: str = Field("", validation_alias="OLLABRIDGE_INBOX_MODEL")
    default_model: str = Field("qwen2.5:1.5b", validation_alias="OLLABRIDGE_DEFAULT_MODEL")
    # Room for a 5 MB photo as base64 (~7 MB) in a chat, with headroom for a long conversation.
    max_body_bytes: int = Field(16 * 1024 * 1024, validation_alias="OLLABRIDGE_MAX_BODY_BYTES")
    # Model names the backends do not have, mapped to served ones: `claude-*=qwen2.5:7b,gpt-4o*=qwen2.5:7b`
    # (glob patterns, first match wins), so clients with hard-wired model names work.
    model_aliases_raw: str = Field("", validation_alias="OLLABRIDGE_MODEL_ALIASES")
    cors_origins_raw: str = Field("*", validation_alias="OLLABRIDGE_CORS_ORIGINS")
    data_dir: str = Field(default_factory=_default_data_dir, validation_alias="OLLABRIDGE_DATA_DIR")
    admin_token: str = Field("", validation_alias="OLLABRIDGE_ADMIN_TOKEN")
    # Hugging Face users or organizations (comma-separated) who own the UI on a Space besides the
    # Space's author: signed in with Hugging Face they use the Pair and Keys tabs without the admin token.
    owners_raw: str = Field("", validation_alias="OLLABRIDGE_OWNERS")
    ui: bool = Field(True, validation_alias=AliasChoices("OLLABRIDGE_UI"))
    public_url: str = Field("", validation_alias="OLLABRIDGE_PUBLIC_URL")
    # Backend timeouts (seconds): connect, first byte of a response, gap between streamed chunks.
    connect_timeout: float = Field(5.0, validation_alias="OLLABRIDGE_CONNECT_TIMEOUT")
    first_token_timeout: float = Field(300.0, validation_alias="OLLABRIDGE_FIRST_TOKEN_TIMEOUT")
    idle_timeout: float = Field(120.0, validation_alias="OLLABRIDGE_IDLE_TIMEOUT")
    # A stream whose backend is lost mid-answer continues on another backend with the model
    # (ollabridge/routing/resume.py), at most `resume_max` times per request.
    resume: bool = Field(True, validation_alias="OLLABRIDGE_RESUME")
    resume_max: int = Field(2, ge=0, validation_alias="OLLABRIDGE_RESUME_MAX")
    # A GPU node's stream silent for max(stall_after, stall_factor x its longest gap so far) gets
    # the node pinged; no frame back within stall_ping seconds: the node is lost (routing/stall.py).
    stall_after: float = Field(1.0, ge=0, validation_alias="OLLABRIDGE_STALL_AFTER")
    stall_factor: float = Field(8.0, ge=0, validation_alias="OLLABRIDGE_STALL_FACTOR")
    stall_ping: float = Field(1.0, gt=0, validation_alias="OLLABRIDGE_STALL_PING")
    # A request whose leading messages match a recent one's goes to the backend that served it, while
    # that one has a free slot and is not much slower (routing/affinity.py).
    affinity: bool = Field(True, validation_alias="OLLABRIDGE_AFFINITY")
    models_ttl: float = Field(5.0, validation_alias="OLLABRIDGE_MODELS_TTL")
    max_queue: int = Field(64, validation_alias="OLLABRIDGE_MAX_QUEUE")
    queue_timeout: float = Field(60.0, validation_alias="OLLABRIDGE_QUEUE_TIMEOUT")
    # Tokens a request without num_predict (max_tokens) is expected to make, for the estimate of which
    # free backend finishes it soonest (routing/slots.py: measured time to first chunk + tokens / speed).
    expected_tokens: int = Field(256, gt=0, validation_alias="OLLABRIDGE_EXPECTED_TOKENS")
    # Seconds between samples of the Status tab's 15-minute history (ollabridge/stats_history.py).
    history_period: float = Field(5.0, gt=0, validation_alias="OLLABRIDGE_HISTORY_PERIOD")
    engine_start_timeout: float = Field(120.0, validation_alias="OLLABRIDGE_ENGINE_START_TIMEOUT")
    log_level: str = Field("info", validation_alias="OLLABRIDGE_LOG_LEVEL")
    # GPU nodes (relay + pairing): seconds between pings (3 missed = dead), largest frame in bytes,
    # seconds a device waits between polls, pairing starts per client address per minute, and the
    # most codes waiting for approval at once.
    relay_heartbeat_s: float = Field(10.0, validation_alias="OLLABRIDGE_RELAY_HEARTBEAT")
    relay_max_frame: int = Field(8 * 1024 * 1024, validation_alias="OLLABRIDGE_RELAY_MAX_FRAME")
    device_interval: float = Field(5.0, validation_alias="OLLABRIDGE_DEVICE_INTERVAL")
    device_rate: int = Field(10, validation_alias="OLLABRIDGE_DEVICE_RATE")
    device_max_pending: int = Field(50, validation_alias="OLLABRIDGE_DEVICE_MAX_PENDING")
    # The public API's guard (ollabridge/edge/). Keys: comma-separated; with none here and none
    # minted (POST /admin/keys) the API is open. Limits: requests a minute and requests in flight
    # (streams until their last chunk) per client address, or per key for requests with a valid key;
    # 0 turns a limit off. Forwarded hops: proxies in front whose X-Forwarded-For is trusted (1 on a
    # Space; 0 trusts no header). Keep-alive: seconds between SSE comments while a stream waits.
    api_keys_raw: str = Field("", validation_alias="OLLABRIDGE_API_KEYS")
    rate_limit_rpm: int = Field(60, validation_alias="OLLABRIDGE_RATE_LIMIT_RPM")
    rate_limit_streams: int = Field(4, validation_alias="OLLABRIDGE_RATE_LIMIT_STREAMS")
    key_rate_limit_rpm: int = Field(600, validation_alias="OLLABRIDGE_KEY_RATE_LIMIT_RPM")
    key_rate_limit_streams: int = Field(16, validation_alias="OLLABRIDGE_KEY_RATE_LIMIT_STREAMS")
    forwarded_hops: int = Field(0, validation_alias="OLLABRIDGE_FORWARDED_HOPS")
    # Wrong admin tokens, API keys and device codes per client address (edge/guesses.py): at most
    # guess_limit a minute (0: no limit), then 429 for guess_lockout seconds, doubled at each lock-out.
    guess_limit: int = Field(10, validation_alias="OLLABRIDGE_GUESS_LIMIT")
    guess_lockout: float = Field(60.0, validation_alias="OLLABRIDGE_GUESS_LOCKOUT")
    keepalive_s: float = Field(15.0, validation_alias="OLLABRIDGE_KEEPALIVE")
    request_timeout: float = Field(600.0, validation_alias="OLLABRIDGE_REQUEST_TIMEOUT")
    shutdown_timeout: float = Field(8.0, validation_alias="OLLABRIDGE_SHUTDOWN_TIMEOUT")
    metrics: Literal["1", "0", "admin"] = Field("1", validation_alias="OLLABRIDGE_METRICS")
    log_content: bool = Field(False, validation_alias="OLLABRIDGE_LOG_CONTENT")
    # Several replicas: the Redis that holds their shared state (keys, pairings, device codes, the
    # generated admin token, rate limits, lock-outs) and GPU node presence; empty: the data dir's
    # SQLite file (one replica).
    redis_url: str = Field("", validation_alias="OLLABRIDGE_REDIS_URL")
    # Models the gateway pulls into Ollama in the background after it starts (comma-separated).
    # Empty here so that a local run never downloads by surprise; start.sh (the Space) defaults it to
    # qwen2.5:1.5b. Ignored while the in-box engine serves.
    models_raw: str = Field("", validation_alias="OLLABRIDGE_MODELS")
    # Several replicas (deploy/): the address the other replicas reach this one at (they forward
    # requests for the GPU nodes connected here to it).
    replica_url: str = Field("", validation_alias="OLLABRIDGE_REPLICA_URL")

    @cached_property
    def upstreams(self) -> list[str]:
        return [url.rstrip("/") for url in _split(self.upstreams_raw)]

    @cached_property
    def model_aliases(self) -> list[tuple[str, str]]:
        pairs = []
        for entry in _split(self.model_aliases_raw):
            pattern, sep, target = entry.partition("=")
            if not sep or not pattern.strip() or not target.strip():
                raise ValueError(f"OLLABRIDGE_MODEL_ALIASES: {entry!r} is not pattern=model")
            pairs.append((pattern.strip(), target.strip()))
        return pairs

    @cached_property
    def api_keys(self) -> list[str]:
        return _split(self.api_keys_raw)

    @cached_property
    def owners(self) -> list[str]:
        return _split(self.owners_raw)

    @cached_property
    def pull_models(self) -> list[str]:
        return _split(self.models_raw)

    @cached_property
    def cors_origins(self) -> list[str]:
        return _split(self.cors_origins_raw) or ["*"]

    @cached_property
    def data_path(self) -> Path:
        return Path(self.data_dir)
