"""The web page in a real browser: headless Chromium (Debian's package), driven over the Chrome
DevTools Protocol, picks an image, and the page shows the caption the CLI gives for that image."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx")
websockets_sync = pytest.importorskip("websockets.sync.client", reason="websockets is not installed")

sys.path.insert(0, str(Path(__file__).parent))
from serve_support import ServerProcess, free_port, make_checkpoint, write_images  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=900,700",
]
SCREENSHOT_ENV = "GEO_OS_SERVE_SCREENSHOT"  # where to also save the screenshot (docs/images/serve_page.png)


class DevTools:
    """A minimal Chrome DevTools Protocol client: one page target, commands answered in order."""

    def __init__(self, socket) -> None:
        self.socket = socket
        self.ids = itertools.count(1)

    def __call__(self, method: str, **params):
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.recv(timeout=60))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        return self("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium browser on this machine (.ci/run installs Debian's chromium)")
def test_the_page_captions_an_uploaded_image_in_chromium(tmp_path):
    from click.testing import CliRunner

    from geometry_os.cli import cli

    make_checkpoint(tmp_path / "ck")
    (image,) = write_images(tmp_path / "images", 1)
    expected = json.loads(
        CliRunner()
        .invoke(cli, ["pixel-llm", "caption", str(image), "--checkpoint", str(tmp_path / "ck"), "--json"])
        .stdout
    )[0]["caption"]
    server = ServerProcess(tmp_path / "ck", tmp_path / "logs")
    port = free_port()
    browser = subprocess.Popen(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--remote-debugging-port={port}",
            server.url + "/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, page = time.monotonic() + 60, None
        while page is None and time.monotonic() < deadline:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                page = next((t for t in targets if t.get("type") == "page" and t["url"].startswith(server.url)), None)
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert page is not None, "Chromium did not open the page"
        with websockets_sync.connect(page["webSocketDebuggerUrl"], max_size=50_000_000, open_timeout=30) as socket:
            tools = DevTools(socket)
            tools.wait_for("document.readyState === 'complete' && !!document.querySelector('#files')")
            tools.evaluate("document.getElementById('explain').checked = true")
            root = tools("DOM.getDocument")["root"]["nodeId"]
            node = tools("DOM.querySelector", nodeId=root, selector="#files")["nodeId"]
            tools("DOM.setFileInputFiles", nodeId=node, files=[str(image)])
            shown = tools.wait_for(
                "(document.querySelector('.result .caption') || {}).textContent || "
                "(document.querySelector('#error') || {}).textContent"
            )
            assert shown == expected
            assert tools.wait_for("(document.querySelector('.result img.attention') || {}).naturalWidth > 0")
            picture = base64.b64decode(tools("Page.captureScreenshot", format="png")["data"])
            assert picture.startswith(b"\x89PNG")
            (tmp_path / "page.png").write_bytes(picture)
            if os.environ.get(SCREENSHOT_ENV):
                Path(os.environ[SCREENSHOT_ENV]).write_bytes(picture)
    finally:
        browser.terminate()
        browser.wait(timeout=30)
        server.close()
