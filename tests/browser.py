"""A real browser for the report pages' tests: Debian's Chromium, headless, driven over its
DevTools protocol (one websocket, JSON messages) with nothing but `websockets`.

    with Chromium() as browser:
        view = browser.open(page_path, width=1280)
        view.errors        # console errors, uncaught exceptions, failed loads: [] when clean
        view.requests      # every URL the page asked for besides itself
        view.evaluate("document.title")
        png = view.screenshot(x, y, width, height)

The flags keep it from reaching any network (this machine refuses its connections anyway):
no background networking, component updates, sync or QUIC, a fresh profile each time.
Chromium missing is an error, never a skip: scripts/install-system-deps.sh installs it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-port=0",
)
START_TIMEOUT_S = 90.0  # a cold Chromium on a busy 2-core machine
CALL_TIMEOUT_S = 120.0


class BrowserError(RuntimeError):
    pass


class Chromium:
    def __init__(self, executable: str = CHROMIUM) -> None:
        if not Path(executable).is_file():
            raise BrowserError(
                f"{executable} is missing: run scripts/install-system-deps.sh (it installs "
                "Debian's chromium)"
            )
        self.executable = executable
        self.profile = Path(tempfile.mkdtemp(prefix="plan-job-chromium-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws: ClientConnection | None = None
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self._connection = contextlib.ExitStack()

    def __enter__(self) -> Chromium:
        with open(self.profile / "chromium.log", "wb") as log:
            self.proc = subprocess.Popen(
                [self.executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _complete(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.profile / "chromium.log").read_text(errors="replace")[-2000:]
                self.close()
                raise BrowserError(f"Chromium did not start its DevTools endpoint:\n{tail}")
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        self._connection = contextlib.ExitStack()
        self.ws = self._connection.enter_context(
            connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=30)
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.ws is not None:
            self._connection.close()
            self.ws = None
        if self.proc is not None:
            self.proc.terminate()  # our own process, by its handle
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.profile, ignore_errors=True)

    # -- the protocol ------------------------------------------------------------------------

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer, keeping the events that come first."""
        assert self.ws is not None, "use Chromium as a context manager"
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while True:
            reply = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self._events.append(reply)

    def wait_for(self, method: str, session: str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        assert self.ws is not None
        deadline = time.monotonic() + timeout_s
        while not any(
            e.get("method") == method and e.get("sessionId") == session for e in self._events
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(f"no {method} within {timeout_s:.0f} s")
            self._events.append(json.loads(self.ws.recv(timeout=remaining)))

    def events(self, session: str) -> list[dict[str, Any]]:
        return [e for e in self._events if e.get("sessionId") == session]

    def open(self, page: Path, width: int, height: int = 900) -> View:
        """A new tab of ``width`` CSS pixels showing the file, once it has loaded."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=width < 600,
        )
        url = page.resolve().as_uri()
        self.call("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired", session)
        return View(self, session, url)


class View:
    """One loaded tab."""

    def __init__(self, browser: Chromium, session: str, url: str) -> None:
        self.browser, self.session, self.url = browser, session, url

    def evaluate(self, expression: str) -> Any:
        result = self.browser.call(
            "Runtime.evaluate", self.session, expression=expression, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and the browser's own error log (a blocked or
        failed load lands there): what a user would see in red in DevTools."""
        self.evaluate("0")  # flush the events the page raised so far
        found = []
        for event in self.browser.events(self.session):
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url')}")
            elif method == "Network.loadingFailed":
                found.append(f"load failed: {params.get('errorText')}")
        return found

    @property
    def requests(self) -> list[str]:
        """Every URL the tab asked for besides the page itself (data: URLs included)."""
        return [
            e["params"]["request"]["url"]
            for e in self.browser.events(self.session)
            if e.get("method") == "Network.requestWillBeSent"
            and e["params"]["request"]["url"] != self.url
        ]

    def screenshot(self, x: float, y: float, width: float, height: float) -> bytes:
        """A PNG of that rectangle of the page, in CSS pixels (at scale 1)."""
        shot = self.browser.call(
            "Page.captureScreenshot",
            self.session,
            format="png",
            captureBeyondViewport=True,
            clip={"x": x, "y": y, "width": width, "height": height, "scale": 1},
        )
        return base64.b64decode(shot["data"])

    def full_page(self) -> bytes:
        metrics = self.browser.call("Page.getLayoutMetrics", self.session)
        size = metrics["cssContentSize"]
        return self.screenshot(0, 0, size["width"], size["height"])


def _complete(port_file: Path) -> bool:
    try:
        return len(port_file.read_text().split()) >= 2
    except OSError:
        return False
