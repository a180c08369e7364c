"""`python -m sdrt.bench.steps`: a command measured as one step of a results folder (row, log, RUN.md)."""

from __future__ import annotations

import json
import sys

from sdrt.bench import steps


def test_a_step_is_measured_and_recorded(tmp_path):
    out = tmp_path / "results"
    code = steps.main(["--out", str(out), "--step", "hold", "--title", "t", "--", sys.executable, "-c",
                       "import time; block = bytearray(200 * 2**20); time.sleep(1.0); print('done')"])
    assert code == 0
    (row,) = json.loads((out / "result.json").read_text())["steps"]
    assert row["exit"] == 0 and row["peak_rss_gib"] >= 0.15 and "wall_s" in row
    assert "done" in (out / "hold.log").read_text() and "| hold |" in (out / "result.md").read_text()
    assert (out / "RUN.md").is_file()
    assert steps.main(["--out", str(out), "--step", "fail", "--", sys.executable, "-c", "raise SystemExit(3)"]) == 3
    assert [r["step"] for r in json.loads((out / "result.json").read_text())["steps"]] == ["hold", "fail"]
