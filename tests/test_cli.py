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
