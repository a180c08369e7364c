"""The benchmark scripts run as `python -m sdrt.bench.NAME` (their old home was benchmarks/*.py): each entry
point parses its arguments (`--help` prints the usage and exits 0), and importing one runs nothing."""

from __future__ import annotations

import runpy
import sys

import pytest

MODULES = ["footprint", "flux_full_export", "flux_new_user", "lora_switch", "schedulers_bench", "serve_load",
           "probes.lora_ready_graph", "probes.switch_breakdown", "probes.ort_override_copy", "probes.scratch_page_fault",
           "probes.trt_rtx", "sd3_new_user", "steps", "controlnet_new_user"]


@pytest.mark.parametrize("name", MODULES)
def test_runs_as_a_module(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module(f"sdrt.bench.{name}", run_name="__main__")
    assert exit_.value.code == 0
    assert f"usage: python -m sdrt.bench.{name}" in capsys.readouterr().out


def test_the_lora_new_user_run_waits_for_main(monkeypatch, tmp_path):
    """It takes its settings from the environment, not arguments; importing it must not start a run."""
    monkeypatch.chdir(tmp_path)
    import sdrt.bench.lora_new_user as script

    assert callable(script.main) and "BACKEND" in script.ENV
    assert list(tmp_path.iterdir()) == []  # no work folder written on import
