"""`python -m ollabridge space duplicate --to <user>/<name>`: your own OllaBridge Space in one command.

Duplicates the OllaBridge Space (default `ruslanmv/ollabridge`, or `--from`) under your account with
huggingface_hub, with `OLLABRIDGE_ADMIN_TOKEN` set as a Space secret (generated when not given, and
then shown once) and `OLLABRIDGE_PUBLIC_URL` as a variable, then prints the Space's URL and the OpenAI
base URL to use. The Hugging Face token comes from `--token`, HF_TOKEN or `hf auth login`; it needs
write access. HF_ENDPOINT picks the Hub (tests point it at a stand-in).

`python -m ollabridge space stage DIR` lays out the Space repository (README with its front matter
and Dockerfile at the top, the app beside them) from this checkout, to push as a new source Space.

`add_arguments(parser)` and `run(args)` are the `space` entry of `python -m ollabridge` (its COMMANDS);
`main(argv)` runs the same alone (`python -m ollabridge.space.deploy duplicate ...`).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SOURCE = os.environ.get("OLLABRIDGE_SPACE_SOURCE", "ruslanmv/ollabridge")
ROOT = Path(__file__).resolve().parents[2]  # the checkout (this file is ollabridge/space/deploy.py)
# What the Space repository holds, as (path in this checkout, path in the Space repo).
SPACE_FILES = [("space/README.md", "README.md"), ("space/Dockerfile", "Dockerfile"),
               ("space/GUIDE.md", "GUIDE.md"), ("app.py", "app.py"), ("start.sh", "start.sh"),
               ("requirements.lock", "requirements.lock"), ("ollabridge", "ollabridge")]


class DeployError(RuntimeError):
    """What went wrong, as a sentence for the user."""


@dataclass
class Duplicated:
    space_id: str
    page_url: str  # the Space's page on the Hub
    app_url: str  # where the app answers
    admin_token: str
    generated: bool  # the admin token was made here (show it once)

    @property
    def openai_base_url(self) -> str:
        return f"{self.app_url}/ollama/v1"


def space_host(space_id: str) -> str:
    """`Alice/My_Space` -> `alice-my-space.hf.space` (the Hub's subdomain rule)."""
    return re.sub(r"[^a-z0-9-]+", "-", space_id.replace("/", "-").lower()).strip("-") + ".hf.space"


def _token(explicit: str | None) -> str:
    if explicit:
        return explicit
    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise DeployError("no Hugging Face token: set HF_TOKEN or run `hf auth login` with a token that has "
                          "write access (https://huggingface.co/settings/tokens)")
    return token


def duplicate(to_id: str, *, from_id: str = DEFAULT_SOURCE, admin_token: str | None = None,
              token: str | None = None, private: bool | None = None, hardware: str | None = None) -> Duplicated:
    """Duplicate `from_id` as `to_id` with the admin token as a secret; raise DeployError on failure."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError

    api = HfApi(token=_token(token))
    try:
        user = api.whoami()["name"]
    except HfHubHTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        if code == 401:
            raise DeployError("the Hugging Face token was refused (401): check HF_TOKEN or run "
                              "`hf auth login` again") from exc
        raise DeployError(f"could not check the Hugging Face token: {exc}") from exc
    if "/" not in to_id:
        to_id = f"{user}/{to_id}"
    generated = not admin_token
    admin_token = admin_token or secrets.token_urlsafe(24)
    app_url = f"https://{space_host(to_id)}"
    space_secrets = [{"key": "OLLABRIDGE_ADMIN_TOKEN", "value": admin_token,
                      "description": "OllaBridge admin token (approves GPU nodes)"}]
    space_variables = [{"key": "OLLABRIDGE_PUBLIC_URL", "value": app_url}]
    try:
        if hasattr(api, "duplicate_space"):  # huggingface_hub < 1.x
            url = api.duplicate_space(from_id, to_id=to_id, private=private, hardware=hardware,
                                      secrets=space_secrets, variables=space_variables)
        else:  # huggingface_hub >= 1.x: one call for every repo type
            url = api.duplicate_repo(from_id, to_id, repo_type="space", private=private,
                                     space_hardware=hardware, space_secrets=space_secrets,
                                     space_variables=space_variables)
    except RepositoryNotFoundError as exc:
        raise DeployError(f"no Space {from_id} to duplicate (or it is private); pass --from <owner>/<space>") from exc
    except HfHubHTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        if code == 409:
            raise DeployError(f"{to_id} already exists; pick another name with --to") from exc
        if code in (401, 403):
            raise DeployError(f"the Hub refused to create {to_id} (HTTP {code}): the token needs write access "
                              f"to {to_id.split('/')[0]}") from exc
        raise DeployError(f"duplicating {from_id} failed: {exc}") from exc
    return Duplicated(space_id=to_id, page_url=str(url), app_url=app_url, admin_token=admin_token,
                      generated=generated)


def stage(dest: Path) -> Path:
    """Lay out the Space repository in `dest` (which must not exist or be empty)."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise DeployError(f"{dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for src, rel in SPACE_FILES:
        source, target = ROOT / src, dest / rel
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore)
        else:
            shutil.copy2(source, target)  # keeps start.sh executable
    return dest


# -- command line ------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `duplicate` and `stage` under `parser` (the `space` command); each sets `func(args) -> int`."""
    sub = parser.add_subparsers(dest="space_command", metavar="SUBCOMMAND", required=True)
    dup = sub.add_parser("duplicate", help="duplicate the OllaBridge Space under your account",
                         description=__doc__.split("\n\n")[1])
    dup.add_argument("--to", required=True, metavar="USER/NAME", help="the new Space (NAME alone: your account)")
    dup.add_argument("--from", dest="from_id", default=DEFAULT_SOURCE, metavar="OWNER/SPACE",
                     help=f"the Space to duplicate (default {DEFAULT_SOURCE})")
    dup.add_argument("--admin-token", default=os.environ.get("OLLABRIDGE_ADMIN_TOKEN") or None,
                     help="the Space's admin token (default: OLLABRIDGE_ADMIN_TOKEN, else a new random one)")
    dup.add_argument("--token", default=None, help="Hugging Face token (default: HF_TOKEN or your login)")
    dup.add_argument("--private", action="store_true", default=None, help="make the new Space private")
    dup.add_argument("--hardware", default=None, help="e.g. cpu-basic (free), t4-small (paid)")
    dup.set_defaults(func=_cmd_duplicate)
    stg = sub.add_parser("stage", help="lay out the Space repository from this checkout")
    stg.add_argument("dest", type=Path)
    stg.set_defaults(func=_cmd_stage)


def run(args: argparse.Namespace) -> int:
    """Run the `space` subcommand that `add_arguments` parsed."""
    return args.func(args)


def _cmd_duplicate(args: argparse.Namespace) -> int:
    try:
        done = duplicate(args.to, from_id=args.from_id, admin_token=args.admin_token, token=args.token,
                         private=args.private, hardware=args.hardware)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Duplicated {args.from_id} as {done.space_id}")
    print(f"  Space page:      {done.page_url}")
    print(f"  App URL:         {done.app_url}   (answers once the Space has built, a few minutes)")
    print(f"  OpenAI base URL: {done.openai_base_url}")
    print(f"  Health:          {done.app_url}/health")
    if done.generated:
        print(f"  Admin token:     {done.admin_token}")
        print("  (set as the Space secret OLLABRIDGE_ADMIN_TOKEN; shown only this once - keep it to approve "
              "GPU nodes)")
    else:
        print("  Admin token:     the one you gave, set as the Space secret OLLABRIDGE_ADMIN_TOKEN")
    return 0


def _cmd_stage(args: argparse.Namespace) -> int:
    try:
        dest = stage(args.dest)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Space repository laid out in {dest}; push it with `hf upload <you>/<space> {dest} --repo-type space`")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m ollabridge.space.deploy duplicate ...`, the same as `python -m ollabridge space duplicate ...`."""
    parser = argparse.ArgumentParser(prog="python -m ollabridge.space.deploy")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
