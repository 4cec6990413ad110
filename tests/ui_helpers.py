"""Helpers for the browser tests of the web UI: launch Debian's Chromium, watch a page for console
errors and requests that leave loopback, and drive the Gradio components by their elem_id."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pytest

from harness import procs

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for a test module (import this fixture into the module)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = launch(p)
        try:
            yield chromium
        finally:
            chromium.close()


@contextmanager
def fake_ollama(out_dir: Path, name: str, models: str, chunks: int, delay: float) -> Iterator[str]:
    """The scripted Ollama (tests/fake_ollama.py) as a process; yields its URL."""
    port = procs.free_port()
    with procs.running(["-m", "tests.fake_ollama", "--port", str(port), "--models", models, "--chunks", str(chunks),
                        "--delay", str(delay)], f"http://127.0.0.1:{port}/api/version",
                       log=out_dir / f"{name}.log", timeout=60):
        yield f"http://127.0.0.1:{port}"


@dataclass
class Watch:
    """What a page did: console errors, uncaught exceptions, requests to hosts other than loopback."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    requests: int = 0

    def attach(self, page) -> "Watch":
        page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("request", self._request)
        return self

    def _request(self, request) -> None:
        self.requests += 1
        url = urlparse(request.url)
        if url.scheme in ("data", "blob", "about"):
            return
        if url.hostname not in LOOPBACK:
            self.outside.append(request.url)

    def problems(self) -> list[str]:
        return ([f"console error: {e}" for e in self.console_errors] + [f"page error: {e}" for e in self.page_errors]
                + [f"request outside loopback: {u}" for u in self.outside])


def open_tab(page, label: str) -> None:
    """Select a top-level tab; on a narrow screen Gradio may have moved it into the "More tabs" menu."""
    tab = page.locator("#ob-tabs > .tab-wrapper [role=tablist] button", has_text=label)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
    else:
        page.locator("#ob-tabs > .tab-wrapper .overflow-menu > button").click()
        page.locator("#ob-tabs > .tab-wrapper .overflow-dropdown button", has_text=label).first.click()
    page.wait_for_function("(l) => [...document.querySelectorAll('#ob-tabs [role=tab][aria-selected=true]')]"
                           ".some(t => t.textContent.trim() === l)", arg=label)


def shoot(page, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll a browser-side predicate (Gradio's async updates have no event to await)."""
    return procs.wait_until(predicate, timeout, what, interval)


def bot_messages(page) -> list[str]:
    """The text of every assistant message in the chat, oldest first."""
    return page.eval_on_selector_all("#chatbot [data-testid='bot']", "els => els.map(e => e.innerText)")


def send(page, text: str) -> None:
    """Type a chat message and press Send."""
    page.fill("#chat-input textarea", text)
    page.click("#chat-send")


def final_reply(page, count: int, timeout: float = 120) -> str:
    """Wait for the `count`-th assistant message to carry its footer (or an error) and return it."""
    def done():
        msgs = bot_messages(page)
        return len(msgs) >= count and ("tok/s" in msgs[count - 1] or "⚠️" in msgs[count - 1]) and msgs[count - 1]
    return wait_until(done, timeout, 0.05, f"assistant message #{count}")


def pick(page, elem_id: str, text: str) -> None:
    """Choose the option of a Gradio dropdown whose label contains `text`."""
    page.click(f"#{elem_id} input")
    page.locator("[role=listbox] [role=option]", has_text=text).first.click()
    page.keyboard.press("Escape")


def set_number(page, elem_id: str, value: float) -> None:
    """Set a Gradio slider through its number box."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1")
