"""Schema-driven fuzzing of `sdrt serve` (schemathesis, from the published /openapi.json) against a live tiny
server on 127.0.0.1: bounded in examples per operation and in time, every answer must be below 500, and the
server must still be ready afterwards."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.serve.conftest import live_server, make_service

pytest.importorskip("schemathesis")


def test_schemathesis_finds_no_server_error(tiny_pipeline, tmp_path) -> None:
    from sdrt.serve.app import create_app
    from sdrt.serve.limits import Limits

    # small limits: generated requests that pass validation run in a fraction of a second
    limits = Limits(max_pixels=64 * 64, max_steps=2, max_images=2, max_prompt_chars=300)
    service = make_service({"tiny": tiny_pipeline}, limits=limits, max_batch=1, timeout_s=60)
    cli = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    try:
        with live_server(create_app(service)) as url:
            run = subprocess.run(
                [cli, "run", f"{url}/openapi.json", "--checks", "not_a_server_error", "--phases", "coverage,fuzzing",
                 "--max-examples", "6", "--max-time", "45", "--workers", "1", "--request-timeout", "60",
                 "--seed", "1", "--no-color", "--generation-database", "none", "--max-failures", "5"],
                capture_output=True, text=True, timeout=300, cwd=tmp_path)
            assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
            assert "passed" in run.stdout and " failed" not in run.stdout.split("SUMMARY")[-1]
            assert requests.get(f"{url}/readyz", timeout=10).json()["ready"] is True
            assert requests.post(f"{url}/sdapi/v1/txt2img", timeout=60, json={
                "prompt": "a boat", "steps": 1, "width": 64, "height": 64}).status_code == 200
    finally:
        service.close()
