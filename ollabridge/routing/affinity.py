"""Conversation affinity: a request whose leading messages match a recent request's goes back to the
backend that served that one, whose KV cache still holds the prefix (its first token comes sooner).

A request's `Conversation` is the chain of hashes of its cumulative prefixes, on the canonical body
every API family becomes: for chat the tools and model, then each message in turn; for generate the
model and template, then the system, the context and the prompt in blocks of `BLOCK` characters. Only
prefixes of at least `MIN_CHARS` characters count (a shorter one is cheap to evaluate again).

`Affinity` remembers, for each prefix hash, the backend that served it last and when: an LRU of at
most `MAX_ENTRIES` hashes (each request adds at most `MAX_PREFIXES`, its longest), each forgotten
after `TTL` seconds. `home(conversation)` is the backend of its longest remembered prefix. The
choice (slots.py) takes the home only while it has a free slot and its estimated finish (counted
without its time to first chunk, which the cached prefix saves) is at most `SLOWER` (relatively)
later than the soonest free backend's (once measured on `MEASURED` streams); otherwise the request is served as any
other (yielded to load). A request that has no home goes, among the equally good free backends, to
the one given a conversation least recently (`since`), so conversations spread over backends and
their caches do not evict one another.
"""

from __future__ import annotations

import hashlib
import json
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ollabridge.backends.base import Backend

#: Seconds a served prefix is remembered (Ollama keeps a model's cache 5 minutes by default).
TTL = 300.0
#: Prefix hashes remembered at most (the oldest forgotten first): ~100 bytes each.
MAX_ENTRIES = 4096
#: Prefix hashes one request adds at most (its longest ones).
MAX_PREFIXES = 64
#: Characters a prefix needs to count (about 128 tokens).
MIN_CHARS = 512
#: Characters per block of a generate prompt (a long prompt shares its leading blocks).
BLOCK = 1024
#: The home is taken while its estimated finish is at most this much (relatively) later than the soonest.
SLOWER = 0.5
#: Streams of the model a home must have been measured on before it may count as slower (one short
#: answer's speed is noise: a load spike of a second made a node look three times slower).
MEASURED = 3


@dataclass(frozen=True)
class Conversation:
    """A request's prefixes that count, shortest first: (hash, characters up to its end)."""

    prefixes: tuple[tuple[bytes, int], ...]


def conversation(op: str, body: dict[str, Any]) -> Conversation | None:
    """The prefixes of the canonical `op` body ("chat" or "generate"); None when none is long enough."""
    digest = hashlib.blake2b(digest_size=16)
    if op == "chat":
        head: Any = [op, body.get("model"), body.get("tools")]
        parts: Iterator[Any] = iter(body.get("messages") or ())
    elif op == "generate":
        head = [op, body.get("model"), body.get("template"), body.get("raw")]
        parts = _generate_parts(body)
    else:
        return None
    digest.update(_canonical(head))
    chars = 0
    prefixes: list[tuple[bytes, int]] = []
    for part in parts:
        data = _canonical(part)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
        chars += len(data)
        if chars >= MIN_CHARS:
            prefixes.append((digest.copy().digest(), chars))
    return Conversation(tuple(prefixes[-MAX_PREFIXES:])) if prefixes else None


def _generate_parts(body: dict[str, Any]) -> Iterator[Any]:
    yield body.get("system") or ""
    context = body.get("context")
    if isinstance(context, list):
        for i in range(0, len(context), BLOCK // 4):
            yield context[i:i + BLOCK // 4]
    prompt = str(body.get("prompt") or "")
    for i in range(0, len(prompt), BLOCK):
        yield prompt[i:i + BLOCK]


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


class Affinity:
    """Which backend served each recent prefix; counts of what became of the requests that had one."""

    def __init__(self, *, ttl: float = TTL, max_entries: int = MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._served: OrderedDict[bytes, tuple[weakref.ref[Backend], float]] = OrderedDict()
        self._given: weakref.WeakKeyDictionary[Backend, float] = weakref.WeakKeyDictionary()
        # hit: served by its home; yielded: the home was full, gone or much slower; miss: no home.
        self.counts = {"hit": 0, "yielded": 0, "miss": 0}

    def __len__(self) -> int:
        return len(self._served)

    def home(self, conv: Conversation | None) -> Backend | None:
        """The backend that served the longest of `conv`'s prefixes within the TTL, if it still exists."""
        if conv is None:
            return None
        oldest = self.clock() - self.ttl
        for key, _chars in reversed(conv.prefixes):
            entry = self._served.get(key)
            if entry is not None and entry[1] >= oldest and (backend := entry[0]()) is not None:
                return backend
        return None

    def served(self, conv: Conversation | None, backend: Backend) -> None:
        """`backend` is serving `conv`: its prefixes now live there (the oldest entries past the bound go)."""
        if conv is None:
            return
        now = self.clock()
        ref = weakref.ref(backend)
        for key, _chars in conv.prefixes:
            self._served[key] = (ref, now)
            self._served.move_to_end(key)
        while len(self._served) > self.max_entries:
            self._served.popitem(last=False)
        self._given[backend] = now

    def since(self, backend: Backend) -> float:
        """When `backend` was last given a conversation (-inf: never): the least recent first."""
        return self._given.get(backend, float("-inf"))

    def count(self, conv: Conversation | None, home: Backend | None, backend: Backend) -> None:
        """Count what became of a request (one with a conversation): hit, yielded or miss."""
        if conv is not None:
            self.counts["miss" if home is None else "hit" if backend is home else "yielded"] += 1
