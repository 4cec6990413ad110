"""A stand-in for the Hugging Face Hub's HTTP API on loopback, for huggingface_hub clients.

Answers what `HfApi.whoami`, `duplicate_space`/`duplicate_repo(repo_type="space")`,
`add_space_secret` and `hf_hub_download` call (read from huggingface_hub's source):

* ``GET  /api/whoami-v2`` - the user for a good token; 401 "Invalid credentials" otherwise.
* ``POST /api/spaces/<owner>/<name>/duplicate`` - body ``{"repository": "<to>", "secrets": [...],
  "variables": [...], ...}``; 404 RepoNotFound for an unknown source, 409 for an existing target.
* ``POST /api/spaces/<owner>/<name>/secrets`` - body ``{"key", "value"}``.
* ``HEAD|GET /<owner>/<repo>/resolve/<rev>/<file>`` - a file with the headers the client checks
  (X-Repo-Commit, ETag, Content-Length). Repos in `private` need a good token (401 RepoNotFound
  without one, like the Hub).

Every call is appended to `calls` as ``(method, path, json body or None, authorization header)``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "1" * 40


class StandinHub:
    def __init__(self, *, tokens: dict[str, str], spaces: set[str], files: dict[str, Path],
                 private: set[str] = frozenset()) -> None:
        self.tokens = tokens  # token -> user name
        self.spaces = set(spaces)  # existing Space ids
        self.files = files  # "<owner>/<repo>/<file>" -> local path
        self.private = set(private)  # model repo ids that need a token
        self.calls: list[tuple[str, str, dict | None, str]] = []
        self.secrets: dict[str, dict[str, str]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> "StandinHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, data: dict | None = None, headers: dict[str, str] | None = None,
                      body: bytes | None = None) -> None:
                raw = body if body is not None else json.dumps(data or {}).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if body is None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(raw)

            def _user(self) -> str | None:
                auth = self.headers.get("Authorization", "")
                return hub.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None

            def _record(self, body: dict | None) -> None:
                hub.calls.append((self.command, self.path, body, self.headers.get("Authorization", "")))

            def _body(self) -> dict:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n)) if n else {}

            def _bad_token(self) -> None:
                self._send(401, {"error": "Invalid credentials in Authorization header"},
                           {"X-Error-Message": "Invalid credentials in Authorization header"})

            def do_GET(self) -> None:  # noqa: N802
                self._record(None)
                if self.path == "/api/whoami-v2":
                    user = self._user()
                    if user is None:
                        return self._bad_token()
                    return self._send(200, {"type": "user", "name": user, "fullname": user.title(),
                                            "auth": {"accessToken": {"role": "write"}}})
                self._resolve()

            def do_HEAD(self) -> None:  # noqa: N802
                self._record(None)
                self._resolve()

            def _resolve(self) -> None:
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
                if not m:
                    return self._send(404, {"error": "not found"})
                repo, _rev, filename = m.groups()
                auth = self.headers.get("Authorization", "")
                if auth and self._user() is None:
                    return self._bad_token()
                if repo in hub.private and self._user() is None:
                    return self._send(401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                path = hub.files.get(f"{repo}/{filename}")
                if path is None:
                    if not any(key.startswith(repo + "/") for key in hub.files):
                        return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    return self._send(404, {"error": "Entry not found"},
                                      {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
                size = path.stat().st_size
                etag = hashlib.sha256(f"{path}|{size}".encode()).hexdigest()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("Content-Length", str(size))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if self.command == "HEAD":
                    return
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        self.wfile.write(chunk)

            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                self._record(body)
                user = self._user()
                m = re.fullmatch(r"/api/spaces/([^/]+/[^/]+)/(duplicate|secrets)", self.path)
                if not m:
                    return self._send(404, {"error": "not found"})
                if user is None:
                    return self._bad_token()
                space, op = m.groups()
                if op == "duplicate":
                    if space not in hub.spaces:
                        return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    target = body["repository"]
                    if target.split("/")[0] != user:
                        return self._send(403, {"error": f"You don't have the rights to create a Space under "
                                                         f"{target.split('/')[0]}"})
                    if target in hub.spaces:
                        return self._send(409, {"error": "You already created this space repo", "url": ""})
                    hub.spaces.add(target)
                    for secret in body.get("secrets") or []:
                        hub.secrets.setdefault(target, {})[secret["key"]] = secret["value"]
                    return self._send(200, {"url": f"{hub.url}/spaces/{target}"})
                if space not in hub.spaces:
                    return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                hub.secrets.setdefault(space, {})[body["key"]] = body["value"]
                return self._send(200, {})

        return Handler
