"""The CLI's contract: one-line errors, non-zero exits, no tracebacks."""

import subprocess
import sys


def sdrt(*args):
    return subprocess.run([sys.executable, "-m", "sdrt.cli", *args], capture_output=True, text=True)


def test_no_command_prints_help_and_fails():
    r = sdrt()
    assert r.returncode == 2 and "COMMAND" in r.stdout


def test_info_lists_backends():
    r = sdrt("info", "--json")
    assert r.returncode == 0, r.stderr
    import json
    report = json.loads(r.stdout)
    assert report["versions"]["sdrt"]
    assert set(report["backends"]) == {"tensorrt", "tensorrt_rtx", "ort-cuda", "ort-cpu", "openvino"}


def test_info_on_a_missing_folder_is_one_line(tmp_path):
    r = sdrt("info", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "does not exist" in r.stderr


def test_missing_optional_dependency_names_the_extra(tmp_path):
    """A lean install (no torch) asked to export: one line naming `sdrt[export]`, no traceback."""
    blocker = tmp_path / "block" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    import os
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "block")}
    r = subprocess.run([sys.executable, "-m", "sdrt.cli", "export", "--model", "tiny", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "pip install 'sdrt[export]'" in r.stderr
    assert not (tmp_path / "o").exists()


def test_every_option_of_every_command_has_help_text():
    import argparse

    from sdrt import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {action.option_strings[0]}" for name, command in sub.choices.items()
               for action in command._actions if action.option_strings and not action.help]
    assert missing == []
    assert all(command.description for command in sub.choices.values())


def test_help_says_what_the_demo_presets_and_build_are():
    """What a newcomer reads first: the demo runs the trained shapes preset (not tiny), presets are not all
    random-weight, `build` is for TensorRT (ONNX Runtime needs none)."""
    top = sdrt("--help").stdout
    assert "tiny preset" not in top and "seeded random-weight preset" not in top
    demo_line = next(line for line in top.splitlines() if line.strip().startswith("demo "))
    assert "shapes" in demo_line
    build = " ".join(top[top.index("    build"):top.index("    generate")].split())
    assert "TensorRT" in build and "ONNX Runtime and OpenVINO need no build" in build
    assert "sdrt demo" in top  # where to start

    demo = sdrt("demo", "--help").stdout
    assert "tiny preset" not in demo and "shapes" in demo and "sample.png" in demo

    from sdrt.export.presets import PRESETS

    preset = sdrt("preset", "--help").stdout
    trained, random_weights = preset.split("presets with seeded random weights")
    assert all(f"  {name} " in (trained if p.trained else random_weights) for name, p in PRESETS.items())
    assert "  shapes " in trained


def test_serve_help_has_the_access_log_option():
    text = " ".join(sdrt("serve", "--help").stdout.split())
    assert "--log-prompts" in text and "access log" in text
