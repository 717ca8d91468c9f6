"""Helpers of the browser tests: a real headless Chromium (Debian package ``chromium``) driven over the
DevTools protocol (CDP, JSON over a websocket).

:class:`Chromium` starts the browser with a throw-away profile and software WebGL (SwiftShader, no GPU
needed); :class:`Page` sends commands to its tab, keeps what the page logged (console errors, uncaught
exceptions, failed requests) for failure messages, evaluates JavaScript and takes screenshots.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import requests
import websocket

logger = logging.getLogger(__name__)

# Headless without a GPU or a sandbox (containers); no background traffic to Google's services.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--disable-background-networking", "--disable-component-update", "--no-first-run",
                  "--no-default-browser-check", "--disable-dev-shm-usage", "--mute-audio")


def chromium_binary() -> str | None:
    """Path of Chromium, or None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_chromium() -> str:
    """Chromium's path; skips the calling test when it is not installed."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("Chromium is not installed (Debian package chromium; `make system-deps`)")
    return binary


class BrowserError(RuntimeError):
    """The browser did not start, or a DevTools command failed."""


@dataclass
class Page:
    """One tab, over its DevTools websocket. ``log`` collects what the page reported, in order."""

    ws: websocket.WebSocket
    log: list[str] = field(default_factory=list)
    _next_id: int = 0

    def call(self, method: str, *, timeout_s: float = 60.0, **params: Any) -> dict[str, Any]:
        """Send a CDP command and return its result; events that arrive meanwhile go to :meth:`_event`."""
        self._next_id += 1
        ident = self._next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(f"no answer to {method} within {timeout_s:.0f} s")
            self.ws.settimeout(remaining)
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error'].get('message')}")
                return dict(message.get("result", {}))
            if "method" in message:
                self._event(message["method"], message.get("params", {}))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.log.append(f"console.{params['type']}: {text[:500]}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.log.append(f"uncaught: {str(text)[:800]}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.log.append(f"browser: {entry.get('text', '')[:300]} {entry.get('url', '')}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            self.log.append(f"request failed: {params.get('errorText')} ({params.get('type')})")
        elif method == "Network.responseReceived" and params.get("response", {}).get("status", 0) >= 400:
            response = params["response"]
            path = response.get("url", "").split("?")[0]  # no query strings: they can hold patient names
            self.log.append(f"HTTP {response['status']}: {path[-160:]}")

    def errors(self) -> str:
        """What the page logged, one entry a line (for failure messages)."""
        return "\n".join(self.log[-60:]) or "(nothing logged)"

    def evaluate(self, expression: str, *, timeout_s: float = 60.0) -> Any:
        """The value of a JavaScript expression (promises awaited), as JSON; raises on a page exception."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True,
                           timeout_s=timeout_s)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description") or details.get("text", "error"))
        return result.get("result", {}).get("value")

    def navigate(self, url: str) -> None:
        answer = self.call("Page.navigate", url=url)
        if answer.get("errorText"):
            raise BrowserError(f"navigation failed: {answer['errorText']}")

    def wait_for(self, expression: str, *, timeout_s: float, what: str,
                 check: Callable[[Any], bool] = bool, interval_s: float = 1.0) -> Any:
        """Evaluate ``expression`` until ``check`` accepts its value; fail the test with the page's log."""
        deadline = time.monotonic() + timeout_s
        value: Any = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except BrowserError as exc:
                value = f"(exception: {exc})"
            else:
                if check(value):
                    return value
            time.sleep(interval_s)
        pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}; last value {value!r}\n"
                    f"--- what the page logged:\n{self.errors()}")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the page as it is now."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


@dataclass
class Chromium:
    """A headless Chromium with one tab; use as a context manager. ``profile`` is its user-data folder."""

    profile: Path
    width: int = 1600
    height: int = 1000
    binary: str | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _page: Page | None = field(default=None, init=False, repr=False)

    def start(self, *, timeout_s: float = 60.0) -> Page:
        """Start the browser and connect to its tab."""
        binary = self.binary or chromium_binary()
        if binary is None:
            raise BrowserError("Chromium is not installed (Debian package chromium)")
        self.profile.mkdir(parents=True, exist_ok=True)
        port_file = self.profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        log = open(self.profile.parent / f"{self.profile.name}.log", "ab")  # noqa: SIM115 - the child's
        try:
            self._process = subprocess.Popen(
                [binary, *CHROMIUM_FLAGS, "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
                 f"--window-size={self.width},{self.height}", "about:blank"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while not (port_file.is_file() and port_file.read_text().strip()):  # written once it listens
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BrowserError(f"Chromium did not start; see {self.profile.parent / (self.profile.name + '.log')}")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page_target = next(t for t in targets if t.get("type") == "page")
        # Chromium rejects websocket clients that send an Origin header it was not told to allow.
        ws = websocket.create_connection(page_target["webSocketDebuggerUrl"], timeout=timeout_s,
                                         suppress_origin=True, enable_multithread=False)
        self._page = Page(ws)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self._page.call(f"{domain}.enable")
        return self._page

    def stop(self) -> None:
        page, self._page = self._page, None
        if page is not None:
            try:
                page.ws.close()
            except OSError:
                pass
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # Chromium's helpers (renderer, GPU, zygote) are in its process group: end them all.
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> Page:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
