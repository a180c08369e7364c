"""Every results folder says what made it: RUN.md with the command line and the commit (sdrt.bench.provenance);
and dry runs (a tool tried on a tiny preset, the machinery check) default to benchmarks/dryruns/."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from argparse import Namespace
from datetime import date
from pathlib import Path

from sdrt.bench import fault_soak, provenance
from sdrt.bench.output import DEFAULT_OUT, DRY_RUN_OUT, default_folder, write_report
from tests.bench.test_report import report  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]


def head_commit() -> str | None:
    """`git rev-parse HEAD` of this checkout, asked independently of the code under test."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def check_run_file(folder: Path, command_part: str) -> str:
    text = (folder / "RUN.md").read_text()
    assert text.startswith(provenance.TITLE)
    assert command_part in text
    commit = head_commit()
    if commit:
        assert f"- commit: `{commit}`" in text
    else:
        assert "not a git checkout" in text
    return text


def test_run_file_records_the_command_line_and_the_commit(tmp_path):
    path = provenance.record_run(tmp_path)
    text = check_run_file(tmp_path, f"- command: `{provenance.command_line()}`")
    assert sys.orig_argv[0] in text and f"- working directory: `{os.getcwd()}`" in text
    provenance.record_run(tmp_path)  # a writer that rewrites its files: no second entry
    assert path.read_text() == text


def test_a_run_with_another_command_adds_its_entry(tmp_path, monkeypatch):
    provenance.record_run(tmp_path)
    monkeypatch.setenv("MODEL", "tiny")
    provenance.record_run(tmp_path, env=("MODEL", "UNSET_VARIABLE"))
    entries = [line for line in (tmp_path / "RUN.md").read_text().splitlines() if line.startswith("- command: ")]
    assert len(entries) == 2 and entries[1].startswith("- command: `MODEL=tiny ")
    assert "UNSET_VARIABLE" not in entries[1]


def test_the_commit_outside_a_git_checkout_is_said_to_be_unknown(tmp_path):
    assert provenance.code_version(tmp_path) == (None, False)


def test_report_writers_record_their_run(report, tmp_path):  # noqa: F811
    write_report(report, tmp_path / "bench")
    check_run_file(tmp_path / "bench", provenance.command_line())
    provenance.write_result(tmp_path / "tool", {"schema": "x"}, "# x\n")
    assert {p.name for p in (tmp_path / "tool").iterdir()} == {"result.json", "result.md", "RUN.md"}
    result = {"threads": 4, "backend": "ort-cpu", "steps": 2, "generations": 8, "bad_every": 4, "good_equal": 6,
              "good": 6, "bad_one_line": 2, "bad": 2, "crashes": 0, "rss_mb_first": 1, "rss_mb_last": 1,
              "rss_slope_kb_per_call_second_half": 0.0, "seconds": 1, "load_average": [0.0], "cpus": 2}
    fault_soak.write_result(result, tmp_path / "soak")
    check_run_file(tmp_path / "soak", provenance.command_line())


def test_a_tool_run_as_a_module_records_its_exact_command(tiny_onnx, tmp_path):
    out = tmp_path / "profile"
    command = [sys.executable, "-m", "sdrt.bench.unet_profile", "run", "--model", "tiny", "--onnx", str(tiny_onnx),
               "--configs", "ort-cpu-profile", "--size", "32", "--reps", "1", "--out", str(out)]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    check_run_file(out, "- command: `" + " ".join(command) + "`")


def test_dry_runs_default_outside_the_results(monkeypatch):
    day = date(2026, 12, 7)
    assert default_folder("memory", "tiny", day) == DRY_RUN_OUT / "memory-tiny-2026-12-07"
    assert default_folder("memory", "/x/tiny-sdxl", day) == DRY_RUN_OUT / "memory-tiny-sdxl-2026-12-07"
    assert default_folder("memory", "sd15", day) == DEFAULT_OUT / "memory-sd15-2026-12-07"
    assert DRY_RUN_OUT.parts[-1] == "dryruns" and DEFAULT_OUT.parts[-1] == "results"

    from sdrt.bench.commands_bench import add_arguments
    from sdrt.bench.plan import plan_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert plan_from_args(parser.parse_args(["--suite", "cpu-quick"])).out == DRY_RUN_OUT
    assert plan_from_args(parser.parse_args(["--model", "tiny"])).out == DRY_RUN_OUT
    assert plan_from_args(parser.parse_args(["--suite", "soak"])).out == DEFAULT_OUT  # a recorded result
    assert plan_from_args(parser.parse_args(["--suite", "cpu-sd15"])).out == DEFAULT_OUT
    assert plan_from_args(parser.parse_args(["--suite", "cpu-quick", "--out", "x"])).out == Path("x")


def test_a_tool_tried_on_tiny_writes_under_dryruns(tmp_path, monkeypatch):
    from sdrt.bench import memory_table as mt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sdrt.bench.models.onnx_folder", lambda model, onnx=None: Path("/folder"))
    monkeypatch.setattr(mt, "run_cell", lambda *a: {"status": "failed", "why": "not run here"})
    monkeypatch.setattr(mt, "write_results", lambda out: None)
    out = mt.run(Namespace(model="tiny", onnx=None, sizes="64", contenders="ort-cpu", out=None, timeout=1,
                           max_rss_gb=1, retry_failed=False))
    assert out == DRY_RUN_OUT / f"memory-tiny-{date.today().isoformat()}"
    assert (tmp_path / out / "RUN.md").is_file() and not (tmp_path / DEFAULT_OUT).exists()


def test_every_results_folder_says_what_made_it():
    results = ROOT / "benchmarks" / "results"
    folders = sorted(p for p in results.iterdir() if p.is_dir())
    assert folders
    for folder in folders:
        text = (folder / "RUN.md").read_text() if (folder / "RUN.md").is_file() else ""
        assert "- command: `" in text and "- commit: `" in text, f"{folder.name} has no RUN.md with a command and commit"
        assert "dryrun" not in folder.name, f"{folder.name} is a dry run: it belongs in benchmarks/dryruns/"
