"""`sdrt demo` on the tiny and shapes presets, reusing the session's exports (a fresh export is the exporter's
test): its report, its warm-up, its sample inputs, and every next command it prints, run as printed."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from sdrt.cli import main


@pytest.mark.slow  # sdrt and PyTorch side by side: 21 s on the shared 2-core machine
def test_demo_reuses_a_matching_export_and_reports(tiny_src, tiny_onnx, tmp_path, capsys):
    out = tmp_path / "demo"
    shutil.copytree(tiny_src, out / "tiny-diffusers")
    shutil.copytree(tiny_onnx, out / "tiny-onnx")
    stamp = (out / "tiny-onnx" / "sdrt.json").stat().st_mtime_ns
    # --repeat given: the default depends on how long a warm-up call took (a busy machine: 1), not on the code
    rc = main(["demo", "--preset", "tiny", "--out", str(out), "--steps", "2", "--height", "32", "--width", "48",
               "--repeat", "3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "reusing" in captured.err
    assert (out / "tiny-onnx" / "sdrt.json").stat().st_mtime_ns == stamp  # not exported again
    assert "| UNet per step (median) |" in captured.out and "| end to end |" in captured.out
    psnr = float(re.search(r"PSNR sdrt vs PyTorch: ([\d.]+|inf) dB", captured.out).group(1))
    assert psnr >= 40
    for name in ("sdrt.png", "pytorch.png", "demo.png", "report.md", "sample.png", "mask.png"):
        assert (out / name).is_file()
    assert "(demo.png)" in (out / "report.md").read_text()
    headline = re.search(r"End-to-end speedup [\d.]+x: both sides warmed up \(one untimed call each\), then the "
                         r"median of (\d+) timed calls per side \(sdrt [\d.]+ ms to [\d.]+ ms, PyTorch [\d.]+ ms "
                         r"to [\d.]+ ms\)", captured.out)
    assert headline and headline.group(1) == "3"
    assert headline.group(0) in (out / "report.md").read_text()
    from PIL import Image

    with Image.open(out / "sample.png") as sample, Image.open(out / "mask.png") as mask:
        assert sample.size == mask.size == (48, 32) and sample.mode == "RGB"
        pixels = np.asarray(mask.convert("L"))
    assert pixels[16, 24] == 255 and pixels[0, 0] == 0  # white (repaint) centre, black (keep) border
    assert set(np.unique(pixels)) == {0, 255}
    assert np.array_equal(np.asarray(Image.open(out / "sample.png")), np.asarray(Image.open(out / "sdrt.png")))
    assert "Next, try" in captured.out and f"--model {out / 'tiny-onnx'}" in captured.out


def test_demo_warms_up_each_side_with_the_timed_call_first(tiny_src, tiny_onnx, tmp_path, monkeypatch, capsys):
    """One untimed call per side, the same call (same shapes) as the timed ones, then --repeat timed calls."""
    from sdrt.reference import Reference
    from sdrt.runtime.unet_pipeline import UNetPipeline

    out = tmp_path / "demo"
    shutil.copytree(tiny_src, out / "tiny-diffusers")
    shutil.copytree(tiny_onnx, out / "tiny-onnx")
    calls = {"sdrt": [], "pytorch": []}
    order = []

    def counting(side, original):
        def call(self, prompt, **kwargs):
            calls[side].append({k: kwargs[k] for k in ("num_inference_steps", "height", "width")})
            order.append(side)
            return original(self, prompt, **kwargs)
        return call

    monkeypatch.setattr(UNetPipeline, "__call__", counting("sdrt", UNetPipeline.__call__))
    monkeypatch.setattr(Reference, "__call__", counting("pytorch", Reference.__call__))
    rc = main(["demo", "--preset", "tiny", "--out", str(out), "--steps", "2", "--repeat", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    same = {"num_inference_steps": 2, "height": 64, "width": 64}
    assert calls == {"sdrt": [same] * 3, "pytorch": [same] * 3}  # warm-up + 2 timed, each side
    assert order == ["sdrt", "pytorch"] * 3  # both warm-ups before any timed call, then taking turns
    assert "median of 2 timed calls per side" in captured.out


def test_warm_and_time_returns_only_the_timed_calls():
    from sdrt import demo

    made = []

    def side(name):
        return lambda: made.append(name) or len(made)

    results = demo.warm_and_time({"a": side("a"), "b": side("b")}, repeat=2)
    assert made == ["a", "b", "a", "b", "a", "b"]  # the warm-ups (calls 1 and 2) are not returned
    assert results == {"a": [3, 5], "b": [4, 6]}
    made.clear()
    quick = demo.warm_and_time({"a": side("a")}, repeat=None)  # a quick call: QUICK_REPEAT timed ones
    assert len(quick["a"]) == demo.QUICK_REPEAT


def test_demo_exports_again_when_the_source_changed(tiny_src, tiny_onnx, tmp_path, monkeypatch):
    """A manifest whose content hash does not match the diffusers folder is never reused."""
    import sdrt.export.exporter as exporter

    out = tmp_path / "demo"
    shutil.copytree(tiny_src, out / "tiny-diffusers")
    shutil.copytree(tiny_onnx, out / "tiny-onnx")
    manifest = out / "tiny-onnx" / "sdrt.json"
    data = json.loads(manifest.read_text())
    data["source"]["content_hash"] = "sha256:stale"
    manifest.write_text(json.dumps(data))
    calls = []
    monkeypatch.setattr(exporter, "export_model", lambda *a, **k: calls.append((a, k)))
    from sdrt import demo

    demo.prepare_model("tiny", out)
    assert len(calls) == 1 and calls[0][1]["components"] == demo.DEMO_COMPONENTS


def printed_next_steps(stdout: str) -> tuple[list[str], list[str]]:
    """(shell lines, Python lines) of the demo's closing "Next, try" block."""
    block = stdout[stdout.index("Next, try"):].splitlines()[1:]
    split = next(i for i, line in enumerate(block) if line.startswith("In Python"))
    shell = [line[2:] for line in block[:split]]
    python = [line[2:] for line in block[split + 1:] if line.startswith("  ")]
    return shell, python


def test_every_next_command_the_demo_prints_runs_as_printed(preset_source, onnx_export, tmp_path, monkeypatch,
                                                            capsys):
    """The default demo (shapes, ./sdrt-demo), then each printed line: generate (txt2img, img2img on
    sample.png, inpainting with mask.png), info, serve (answers a request, logs it) and the Python lines."""
    import os
    import shlex
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from PIL import Image

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(preset_source("shapes"), tmp_path / "sdrt-demo" / "shapes-diffusers")
    shutil.copytree(onnx_export("shapes"), tmp_path / "sdrt-demo" / "shapes-onnx")
    assert main(["demo", "--steps", "2", "--repeat", "1"]) == 0
    shell, python = printed_next_steps(capsys.readouterr().out)

    argvs = [shlex.split(line, comments=True) for line in shell]
    prefix = [sys.executable, "-m", "sdrt.cli"]  # how this process runs sdrt (not a `sdrt` console script)
    assert all(argv[:3] == prefix for argv in argvs), shell
    commands = {argv[3]: argv[3:] for argv in argvs if argv[3] != "generate"}
    generate = [argv[3:] for argv in argvs if argv[3] == "generate"]
    assert all(argv[:3] == ["generate", "--model", "sdrt-demo/shapes-onnx"] for argv in generate)
    assert "--image" in generate[1] and "sdrt-demo/sample.png" in generate[1] and "--mask" not in generate[1]
    assert generate[2][generate[2].index("--mask") + 1] == "sdrt-demo/mask.png"
    assert set(commands) == {"info", "serve"}

    for argv, folder in zip(generate, ("txt2img", "img2img", "inpaint")):  # in-process: fast, same parser
        assert main(argv) == 0, (argv, capsys.readouterr().err)
        (png,) = (tmp_path / "sdrt-demo" / folder).glob("*.png")
        assert Image.open(png).size == Image.open(tmp_path / "sdrt-demo" / "sample.png").size
    assert main(commands["info"]) == 0 and "shapes-onnx" in capsys.readouterr().out

    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*prefix, *commands["serve"], "--port", str(port)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "sdrt serve did not come up"
            try:
                urllib.request.urlopen(url + "/readyz", timeout=5).read()
                break
            except OSError:
                time.sleep(0.2)
        request = urllib.request.Request(url + "/sdapi/v1/txt2img", method="POST",
                                         data=json.dumps({"prompt": "a red circle on a blue background", "steps": 2,
                                                          "width": 32, "height": 32, "seed": 1}).encode(),
                                         headers={"Content-Type": "application/json"})
        assert len(json.loads(urllib.request.urlopen(request, timeout=120).read())["images"]) == 1
    finally:
        server.terminate()
        _, err = server.communicate(timeout=60)
    assert re.search(r"sdrt\.access POST /sdapi/v1/txt2img status=200 seconds=[\d.]+ images=1$", err, re.M), err
    assert "a red circle" not in err  # no prompt without --log-prompts

    r = subprocess.run([sys.executable, "-c", "\n".join(python)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert python[0] == "from sdrt.runtime import Pipeline" and "sdrt-demo/shapes-onnx" in python[1]
    assert Image.open(tmp_path / "sdrt-demo" / "python.png").size == (32, 32)


def test_the_next_commands_call_sdrt_the_way_the_demo_was_called(monkeypatch, tmp_path):
    import sys

    from sdrt import demo_next_steps

    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    script = venv_bin / "sdrt"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [".venv/bin/sdrt", "demo"])  # `make demo`, .venv/bin not on PATH
    monkeypatch.setenv("PATH", "/nonexistent")
    assert demo_next_steps.sdrt_command() == ".venv/bin/sdrt"
    monkeypatch.setenv("PATH", str(venv_bin))  # an activated venv: plain `sdrt`
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    assert demo_next_steps.sdrt_command() == "sdrt"
    monkeypatch.setattr(sys, "argv", ["/somewhere/sdrt/cli.py", "demo"])  # python -m sdrt.cli
    assert demo_next_steps.sdrt_command().endswith(" -m sdrt.cli")


def test_a_busy_machine_is_named_in_the_headline():
    from sdrt.demo import busy_machine_note

    assert busy_machine_note(load=1.9, cpus=2) == "" and busy_machine_note(load=3.0, cpus=2) == ""
    assert "looks busy (load 3.5 on 2 CPUs)" in busy_machine_note(load=3.5, cpus=2)
