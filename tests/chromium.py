"""Render an HTML file in real headless Chromium through the DevTools protocol and report what happened:
every network request the page made, console errors and exceptions, and a PNG screenshot.

The Kubeflow UI shows our reports in a sandboxed frame and clusters are often air-gapped: a report must
render with no console error and request nothing outside its own file.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@dataclass
class RenderResult:
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    screenshot: bytes = b""

    @property
    def external_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(("file://", "data:", "about:"))]


def render(html_path: Path, screenshot_path: Path | None = None, timeout: float = 90.0) -> RenderResult:
    """Load ``html_path`` in headless Chromium and collect requests, console errors and a screenshot."""
    import websockets.sync.client as ws_client

    from tests.conftest import free_port

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise FileNotFoundError("chromium is not installed")
    port = free_port()
    profile = tempfile.mkdtemp(prefix="visionops-chromium-")
    proc = subprocess.Popen(
        [
            binary,
            *FLAGS,
            f"--remote-debugging-port={port}",
            f"--user-data-dir={profile}",
            "--window-size=1280,1600",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    result = RenderResult()
    try:
        targets = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                time.sleep(0.2)
        if not targets:
            raise TimeoutError("chromium did not open its DevTools endpoint")
        with ws_client.connect(targets[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024) as ws:
            ids = iter(range(1, 10**6))
            pending: dict[int, str] = {}

            def send(method: str, **params) -> int:
                i = next(ids)
                pending[i] = method
                ws.send(json.dumps({"id": i, "method": method, "params": params}))
                return i

            for domain in ("Network.enable", "Runtime.enable", "Log.enable", "Page.enable"):
                send(domain)
            send("Page.navigate", url=html_path.resolve().as_uri())
            navigated_at = time.monotonic()
            shot_id = None
            loaded_at = None
            full_page = True
            while time.monotonic() < deadline:
                try:
                    msg = json.loads(ws.recv(timeout=0.5))
                except TimeoutError:
                    msg = {}
                method = msg.get("method")
                if method == "Network.requestWillBeSent":
                    result.requests.append(msg["params"]["request"]["url"])
                elif method == "Runtime.exceptionThrown":
                    result.console_errors.append(msg["params"]["exceptionDetails"].get("text", "exception"))
                elif method == "Runtime.consoleAPICalled" and msg["params"]["type"] in ("error", "assert"):
                    result.console_errors.append(
                        " ".join(str(a.get("value", "")) for a in msg["params"]["args"])
                    )
                elif method == "Log.entryAdded":
                    entry = msg["params"]["entry"]
                    if entry.get("url"):  # blocked or failed loads show up here, not always as requests
                        result.requests.append(entry["url"])
                    if entry["level"] == "error":
                        result.console_errors.append(entry.get("text", "error"))
                elif method == "Page.loadEventFired":
                    loaded_at = time.monotonic()
                # a busy machine can drop or delay the load event: after 15 s, take the picture anyway
                ready = (
                    loaded_at and time.monotonic() - loaded_at > 0.5
                ) or time.monotonic() - navigated_at > 15
                if ready and shot_id is None:
                    shot_id = send("Page.captureScreenshot", format="png", captureBeyondViewport=full_page)
                if shot_id is not None and msg.get("id") == shot_id:
                    if "result" in msg:
                        result.screenshot = base64.b64decode(msg["result"]["data"])
                        break
                    full_page, shot_id = False, None  # retry once with the viewport only
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
    if screenshot_path is not None and result.screenshot:
        screenshot_path.write_bytes(result.screenshot)
    return result
