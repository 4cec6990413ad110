"""Who owns this gateway in the web UI: on a Space, its owners signed in with Hugging Face.

On a Space with `hf_oauth: true` in its front matter, Hugging Face gives the app OAUTH_CLIENT_ID
(and the rest of Gradio's OAuth settings) besides SYSTEM=spaces and SPACE_ID; then the page has
Gradio's "Sign in with Hugging Face" button, and a signed-in owner uses the Pair and Keys tabs
without the admin token. Owners are the Space's author (SPACE_AUTHOR_NAME, else SPACE_ID's
namespace) and the names in OLLABRIDGE_OWNERS: a user, or an organization whose admins and writers
count (the `orgs` of their Hugging Face profile, with `roleInOrg`).

Anywhere else there is no sign-in at all (Gradio's local stand-in for it would sign every visitor
in as the machine's own Hugging Face account): the admin token is the only way in, as on the API.
Who the visitor is comes from Gradio's signed session cookie (`gr.OAuthProfile`), never from what
the page sends.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from typing import Any

from ollabridge.config import Settings

ELEVATED_ROLES = frozenset({"admin", "write"})  # an org's members who may change its Spaces


def sign_in_available(env: Mapping[str, str] = os.environ) -> bool:
    """True on a Space with Hugging Face OAuth turned on (`hf_oauth: true`)."""
    return env.get("SYSTEM") == "spaces" and bool(env.get("SPACE_ID")) and bool(env.get("OAUTH_CLIENT_ID"))


def space_author(env: Mapping[str, str] = os.environ) -> str:
    return (env.get("SPACE_AUTHOR_NAME") or (env.get("SPACE_ID") or "").partition("/")[0]).strip()


def owner_names(settings: Settings, env: Mapping[str, str] = os.environ) -> set[str]:
    names = {name.lower() for name in settings.owners}
    if space_author(env):
        names.add(space_author(env).lower())
    return names


def owner_as(profile: Mapping[str, Any] | None, settings: Settings,
             env: Mapping[str, str] = os.environ) -> str | None:
    """The owner name that lets this signed-in profile in (the user's own, or an organization's it
    administers or writes to), else None. Always None where sign-in is not available."""
    if not profile or not sign_in_available(env):
        return None
    names = owner_names(settings, env)
    user = str(profile.get("preferred_username") or "").lower()
    if user and user in names:
        return user
    for org in profile.get("orgs") or []:
        if not isinstance(org, Mapping):
            continue
        name = str(org.get("preferred_username") or "").lower()
        if name and name in names and org.get("roleInOrg") in ELEVATED_ROLES:
            return name
    return None


def admin_token(pairing: Any, settings: Settings, profile: Mapping[str, Any] | None, typed: str | None) -> str:
    """The admin token an owner's action runs with: the gateway's own for a signed-in owner, else
    what the visitor typed (checked by the service, as on the API)."""
    if owner_as(profile, settings) is not None:
        return pairing.admin_token
    return (typed or "").strip()


def note(profile: Mapping[str, Any] | None, settings: Settings, env: Mapping[str, str] = os.environ) -> str:
    """One line for the Pair and Keys tabs: who is signed in and what that allows."""
    if not sign_in_available(env):
        return ""
    user = html.escape(str((profile or {}).get("preferred_username") or ""))
    if owner_as(profile, settings, env) is not None:
        return (f'<div class="ob-msg-ok ob-owner" data-owner="yes">Signed in as <b>{user}</b>, an owner of this '
                "Space: no admin token needed.</div>")
    if profile:
        return (f'<div class="ob-msg-info ob-owner" data-owner="no">Signed in as <b>{user}</b>, who is not an owner '
                "of this Space (its author and OLLABRIDGE_OWNERS are): enter the admin token.</div>")
    return ('<div class="ob-msg-info ob-owner" data-owner="no">Owners: sign in with Hugging Face (top of the page), '
            "or enter the admin token.</div>")
