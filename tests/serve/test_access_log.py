"""The access log: one `sdrt.access` line per request (method, path, status, seconds, images), the prompt
only with --log-prompts, refusals and failures logged with their status; uvicorn's own access log off."""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sdrt.serve import access_log
from tests.serve.conftest import FakePipe

ROOT = Path(__file__).resolve().parents[2]

TXT = {"prompt": "a secret cat", "width": 64, "height": 64, "steps": 2, "seed": 5}
LINE = re.compile(r"^(?P<method>[A-Z]+) (?P<path>\S+) status=(?P<status>\d{3}) seconds=(?P<seconds>\d+\.\d{3}) "
                  r"images=(?P<images>\d+)(?: prompt=(?P<prompt>\".*\"))?$")


@pytest.fixture
def logged(fake_service, caplog):
    """(client for an app, the access lines so far) for create_app(**options) over a fake pipeline."""
    from fastapi.testclient import TestClient

    from sdrt.serve.app import create_app

    caplog.set_level(logging.INFO, logger=access_log.LOGGER_NAME)

    def make(pipe=None, **options):
        service, _ = fake_service(pipe=pipe)
        client = TestClient(create_app(service, **options), raise_server_exceptions=False)
        return client, lambda: [r.getMessage() for r in caplog.records if r.name == access_log.LOGGER_NAME]

    return make


@pytest.fixture
def logged_with_pipe(logged):
    return lambda pipe, **options: logged(pipe=pipe, **options)


def fields(line: str) -> dict[str, str]:
    match = LINE.match(line)
    assert match, f"not an access line: {line!r}"
    return match.groupdict()


def test_a_generation_logs_one_line_with_its_fields_and_no_prompt(logged):
    client, lines = logged()
    r = client.post("/sdapi/v1/txt2img", json={**TXT, "batch_size": 2})
    assert r.status_code == 200, r.text
    assert len(lines()) == 1
    line = fields(lines()[0])
    assert (line["method"], line["path"], line["status"], line["images"]) == ("POST", "/sdapi/v1/txt2img", "200", "2")
    assert float(line["seconds"]) >= 0
    assert line["prompt"] is None and "secret" not in lines()[0]


def test_openai_route_counts_the_images_it_returns(logged):
    client, lines = logged()
    r = client.post("/v1/images/generations", json={"prompt": "a secret cat", "n": 3, "size": "64x64", "steps": 2})
    assert r.status_code == 200, r.text
    assert [fields(x)["images"] for x in lines()] == ["3"]


def test_the_prompt_is_logged_only_when_asked(logged):
    client, lines = logged(log_prompts=True)
    assert client.post("/sdapi/v1/txt2img", json={**TXT, "prompt": "a secret\ncat"}).status_code == 200
    (line,) = lines()
    assert fields(line)["prompt"] == '"a secret\\ncat"'  # quoted and escaped: still one line


def test_a_4xx_is_logged_with_its_status(logged):
    client, lines = logged(log_prompts=True)
    r = client.post("/sdapi/v1/txt2img", json={**TXT, "steps": 100000})
    assert r.status_code == 400, r.text
    (line,) = lines()
    assert fields(line)["status"] == "400" and fields(line)["images"] == "0"
    assert fields(line)["prompt"] == '"a secret cat"'  # a refused request still says what it asked, when asked


def test_requests_refused_before_any_route_are_logged(logged):
    client, lines = logged(api_key="k")
    assert client.post("/sdapi/v1/txt2img", json=TXT).status_code == 401
    assert client.get("/nowhere", headers={"Authorization": "Bearer k"}).status_code == 404
    assert client.get("/healthz").status_code == 200
    assert [(fields(x)["method"], fields(x)["path"], fields(x)["status"]) for x in lines()] == [
        ("POST", "/sdapi/v1/txt2img", "401"), ("GET", "/nowhere", "404"), ("GET", "/healthz", "200")]


def test_a_failing_request_is_logged_as_500(logged_with_pipe):
    class Broken(FakePipe):
        def __call__(self, *args, **kwargs):
            raise RuntimeError("the model broke")

    client, lines = logged_with_pipe(Broken())
    assert client.post("/sdapi/v1/txt2img", json=TXT).status_code == 500
    assert [fields(x)["status"] for x in lines()] == ["500"]


def test_a_path_cannot_break_the_line():
    line = access_log.format_line("GET", "/a b\nGET /forged", 404, 0.0012, 0)
    assert "\n" not in line and fields(line)["path"] == "/a%20b\\nGET%20/forged"


def test_serve_has_the_option_and_turns_uvicorns_access_log_off(monkeypatch, tmp_path):
    """`sdrt serve` passes --log-prompts to the app, sends the log to stderr, and runs uvicorn with
    access_log=False (one line per request, not two)."""
    import uvicorn

    from sdrt.serve import commands_serve

    p = argparse.ArgumentParser()
    commands_serve.add_arguments(p)
    assert p.parse_args(["--model", "x"]).log_prompts is False
    args = p.parse_args(["--model", "x", "--log-prompts"])
    seen = {}

    class FakeService:
        pipelines = {"m": None}

        def close(self):
            seen["closed"] = True

    monkeypatch.setattr(commands_serve, "build_service", lambda a: FakeService())
    monkeypatch.setattr("sdrt.serve.app.create_app", lambda service, **kw: seen.setdefault("app", kw))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.setdefault("uvicorn", kw))
    monkeypatch.setattr(access_log, "to_stderr", lambda: seen.setdefault("stderr", True))
    assert commands_serve.run(args) == 0
    assert seen["app"]["log_prompts"] is True and seen["uvicorn"]["access_log"] is False
    assert seen["stderr"] and seen["closed"]


def test_a_live_server_writes_one_stderr_line_per_request(tmp_path):
    """Through uvicorn, as `sdrt serve` runs it: the lines land on stderr, once each."""
    script = textwrap.dedent("""
        import urllib.request, urllib.error
        from tests.serve.conftest import live_server, make_service, FakePipe
        from sdrt.serve import access_log
        from sdrt.serve.app import create_app

        access_log.to_stderr()
        service = make_service({"fake": FakePipe()})
        with live_server(create_app(service)) as url:
            urllib.request.urlopen(url + "/healthz").read()
            try:
                urllib.request.urlopen(url + "/missing")
            except urllib.error.HTTPError as e:
                assert e.code == 404
        service.close()
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = [x.split(" sdrt.access ", 1)[1] for x in r.stderr.splitlines() if " sdrt.access " in x]
    assert [(fields(x)["path"], fields(x)["status"]) for x in lines] == [("/healthz", "200"), ("/missing", "404")]
