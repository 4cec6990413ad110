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

And the Hub's OpenID Connect provider, what "Sign in with Hugging Face" on a Space uses (Gradio's
OAuth routes through authlib, pointed here by OPENID_PROVIDER_URL), for the clients in `oauth_clients`:

* ``GET  /.well-known/openid-configuration`` - the provider's metadata (RS256 ID tokens).
* ``GET  /oauth/authorize`` - the Hub's consent page, answered at once: signs in as `signing_in`
  (the user the test is playing; 403 when None) and redirects to the client's `redirect_uri` with a
  one-time `code` and the client's `state`.
* ``POST /oauth/token`` - the code (and the client's id and secret, HTTP Basic or in the form) for an
  access token and an ID token whose claims are the Hub's profile fields: `preferred_username`,
  `name`, `picture`, `profile`, and `orgs` (`preferred_username`, `roleInOrg`) from `orgs`.
* ``GET  /oauth/jwks`` - the key that signs the ID tokens; ``GET /oauth/userinfo`` - the same claims.

Every call is appended to `calls` as ``(method, path, json body or None, authorization header)``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "1" * 40


class StandinHub:
    def __init__(self, *, tokens: dict[str, str] | None = None, spaces: set[str] = frozenset(),
                 files: dict[str, Path] | None = None, private: set[str] = frozenset(),
                 oauth_clients: dict[str, str] | None = None,
                 orgs: dict[str, dict[str, str]] | None = None) -> None:
        self.tokens = tokens or {}  # token -> user name
        self.spaces = set(spaces)  # existing Space ids
        self.files = files or {}  # "<owner>/<repo>/<file>" -> local path
        self.private = set(private)  # model repo ids that need a token
        self.oauth_clients = oauth_clients or {}  # OAuth client id -> secret
        self.orgs = orgs or {}  # user -> {org name: role in it}
        self.signing_in: str | None = None  # who the consent page signs in as
        self._codes: dict[str, dict] = {}
        self._access: dict[str, dict] = {}  # access token -> claims
        self._key = None
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

    # -- the OpenID Connect provider -------------------------------------------------------------
    def _signing_key(self):
        from joserfc.jwk import RSAKey

        if self._key is None:
            self._key = RSAKey.generate_key(2048, parameters={"kid": "standin-hub", "use": "sig"})
        return self._key

    def openid_configuration(self) -> dict:
        return {"issuer": self.url, "authorization_endpoint": f"{self.url}/oauth/authorize",
                "token_endpoint": f"{self.url}/oauth/token", "userinfo_endpoint": f"{self.url}/oauth/userinfo",
                "jwks_uri": f"{self.url}/oauth/jwks", "response_types_supported": ["code"],
                "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "profile"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]}

    def authorize(self, query: dict[str, str]) -> tuple[int, str]:
        """(status, redirect location or error) for the consent page."""
        if query.get("client_id") not in self.oauth_clients or not query.get("redirect_uri"):
            return 400, "unknown client or no redirect_uri"
        if self.signing_in is None:
            return 403, "nobody is signing in"
        code = secrets.token_urlsafe(16)
        self._codes[code] = {"user": self.signing_in, "client_id": query["client_id"],
                             "redirect_uri": query["redirect_uri"], "nonce": query.get("nonce"),
                             "scope": query.get("scope") or "openid profile"}
        sep = "&" if "?" in query["redirect_uri"] else "?"
        return 302, query["redirect_uri"] + sep + urllib.parse.urlencode({"code": code,
                                                                          "state": query.get("state", "")})

    def claims(self, user: str) -> dict:
        return {"sub": f"id-{user}", "name": user.title(), "preferred_username": user,
                "profile": f"{self.url}/{user}", "picture": f"{self.url}/avatars/{user}.png", "isPro": False,
                "orgs": [{"sub": f"id-{org}", "name": org.title(), "preferred_username": org,
                          "picture": f"{self.url}/avatars/{org}.png", "isEnterprise": False, "roleInOrg": role}
                         for org, role in self.orgs.get(user, {}).items()]}

    def token(self, form: dict[str, str], authorization: str) -> tuple[int, dict]:
        from joserfc import jwt

        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization.startswith("Basic "):
            client_id, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
            client_id, secret = urllib.parse.unquote(client_id), urllib.parse.unquote(secret)
        if client_id not in self.oauth_clients or self.oauth_clients[client_id] != secret:
            return 401, {"error": "invalid_client"}
        grant = self._codes.pop(form.get("code") or "", None)
        if (grant is None or grant["client_id"] != client_id or form.get("grant_type") != "authorization_code"
                or form.get("redirect_uri") != grant["redirect_uri"]):
            return 400, {"error": "invalid_grant"}
        now = int(time.time())
        claims = {**self.claims(grant["user"]), "iss": self.url, "aud": client_id, "iat": now, "exp": now + 3600,
                  "auth_time": now}
        if grant["nonce"]:
            claims["nonce"] = grant["nonce"]
        access = "hf_oauth_" + secrets.token_urlsafe(16)
        self._access[access] = self.claims(grant["user"])
        id_token = jwt.encode({"alg": "RS256", "kid": "standin-hub"}, claims, self._signing_key())
        return 200, {"access_token": access, "token_type": "bearer", "expires_in": 3600, "scope": grant["scope"],
                     "id_token": id_token}

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
                path, _, query = self.path.partition("?")
                if path == "/.well-known/openid-configuration":
                    return self._send(200, hub.openid_configuration())
                if path == "/oauth/jwks":
                    return self._send(200, {"keys": [hub._signing_key().as_dict(private=False)]})
                if path == "/oauth/authorize":
                    status, where = hub.authorize(dict(urllib.parse.parse_qsl(query)))
                    if status != 302:
                        return self._send(status, {"error": where})
                    return self._send(302, {}, {"Location": where})
                if path == "/oauth/userinfo":
                    claims = hub._access.get(self.headers.get("Authorization", "")[7:])
                    return self._send(200, claims) if claims else self._bad_token()
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
                if self.path == "/oauth/token":
                    n = int(self.headers.get("Content-Length") or 0)
                    form = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))
                    self._record({k: v for k, v in form.items() if k != "client_secret"})
                    status, answer = hub.token(form, self.headers.get("Authorization", ""))
                    return self._send(status, answer, {"Cache-Control": "no-store"})
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
