"""A real headless Chromium, driven over the DevTools protocol: load a page, collect console
errors and failed loads, check its images decoded, take a screenshot.

Chromium comes from the OS packages (`apt-get install chromium`, done by .ci/run); the DevTools
client is `websocket-client` (the test extra). `find_chromium()` says why when either is missing.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> tuple[str | None, str]:
    """(path to the browser, "") or (None, why not)."""
    try:
        import websocket  # noqa: F401
    except ImportError:
        return None, "websocket-client is not installed (pip install -e '.[test]')"
    for name in (os.environ.get("MASKBATCH_CHROMIUM", ""), *CANDIDATES):
        path = shutil.which(name) if name else None
        if path:
            return path, ""
    return None, "no Chromium found (apt-get install chromium, as .ci/run does)"


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    images: int = 0
    broken_images: int = 0
    title: str = ""
    text: str = ""
    screenshot: bytes = b""


def load_page(browser: str, url: str, width: int = 1280, height: int = 2000,
              timeout: float = 60.0) -> PageResult:
    """Open `url` in a fresh headless Chromium; what it logged, rendered and looked like."""
    import websocket

    profile = tempfile.mkdtemp(prefix="mb-chromium-")
    proc = subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--hide-scrollbars", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            target = next(t for t in json.load(r) if t.get("type") == "page")
        ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=timeout,
                                         suppress_origin=True)
        ids = itertools.count(1)
        result = PageResult()

        def handle(event: dict) -> None:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                result.errors.append("console: " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                result.errors.append("exception: " + details.get("exception", {}).get(
                    "description", details.get("text", "")))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                result.errors.append("log: " + params["entry"].get("text", ""))
            elif method == "Network.loadingFailed":
                result.errors.append("load failed: " + params.get("errorText", ""))

        def call(method: str, **params: object) -> dict:
            msg_id = next(ids)
            ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == msg_id:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg.get("result", {})
                handle(msg)

        for domain in ("Runtime", "Log", "Network", "Page"):
            call(f"{domain}.enable")
        call("Page.navigate", url=url)
        # wait for the load event, collecting what the page logs meanwhile
        while True:
            msg = json.loads(ws.recv())
            handle(msg)
            if msg.get("method") == "Page.loadEventFired":
                break
        state = call("Runtime.evaluate", returnByValue=True, expression=(
            "JSON.stringify({title: document.title, text: document.body.innerText,"
            " images: document.images.length,"
            " broken: Array.from(document.images).filter(i => !i.complete ||"
            " i.naturalWidth === 0).length})"))
        info = json.loads(state["result"]["value"])
        result.title, result.text = info["title"], info["text"]
        result.images, result.broken_images = info["images"], info["broken"]
        shot = call("Page.captureScreenshot", format="png",
                    captureBeyondViewport=True,
                    clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        result.screenshot = base64.b64decode(shot["data"])
        ws.close()
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
