"""The one-page UI in headless Chromium (Debian's `chromium`): load /, generate, the image appears."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.serve.conftest import live_server, make_service

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


def chromium(url: str, *flags: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # virtual time waits for the page's fetch of /sdapi/v1/txt2img before the dump / screenshot
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-extensions", "--disable-background-networking", "--disable-sync",
               "--virtual-time-budget=60000", "--window-size=900,860", *flags, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_page_generates_an_image(tmp_path, tiny_pipeline):
    from sdrt.serve.app import create_app

    service = make_service({"tiny": tiny_pipeline})
    try:
        with live_server(create_app(service)) as url:
            page = f"{url}/?prompt=a+lighthouse+at+dawn&steps=4&seed=42&generate=1"
            dom = chromium(page, "--dump-dom")
            assert dom.returncode == 0, dom.stderr[-2000:]
            assert re.search(r'<img id="image" [^>]*src="data:image/png;base64,', dom.stdout), dom.stdout[-3000:]
            assert "Seed: 42" in dom.stdout and "Steps: 4" in dom.stdout
            assert "done in" in dom.stdout
            shot = tmp_path / "page.png"
            done = chromium(page, f"--screenshot={shot}")
            assert done.returncode == 0 and shot.stat().st_size > 1000, done.stderr[-2000:]
            keep = os.environ.get("SDRT_PAGE_SCREENSHOT")  # where to keep the picture (README evidence)
            if keep:
                shutil.copy(shot, keep)
    finally:
        service.close()
