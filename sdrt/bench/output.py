"""Where a benchmark's files go: ``<out>/<suite>-<date>/`` with ``result.json``, ``result.md``
and ``result.png`` — the JSON is the record, the other two are rendered from it — and ``RUN.md``
(the command and commit that made them, sdrt.bench.provenance).

Recorded results live in ``benchmarks/results/``; a dry run (a tool tried on a tiny test preset, or
a suite that only checks the machinery) goes to ``benchmarks/dryruns/`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from sdrt.atomic import write_text
from sdrt.bench.chart import write_chart
from sdrt.bench.markdown import render
from sdrt.bench.provenance import record_run
from sdrt.bench.results import Report

DEFAULT_OUT = Path("benchmarks") / "results"
DRY_RUN_OUT = Path("benchmarks") / "dryruns"
#: model names that make a run a dry run: the seeded test presets (tiny, tiny-sd21, tiny-sdxl, ...)
TEST_MODEL_PREFIX = "tiny"


def is_dry_run(model: str | Path) -> bool:
    """Whether a run on `model` (a preset name, or a folder named after one) only tries the tool out."""
    return Path(model).name.startswith(TEST_MODEL_PREFIX)


def default_folder(kind: str, model: str | Path, day: date | None = None) -> Path:
    """``benchmarks/results/<kind>-<model>-<date>``, or under ``benchmarks/dryruns/`` for a test preset."""
    base = DRY_RUN_OUT if is_dry_run(model) else DEFAULT_OUT
    return base / f"{kind}-{Path(model).name}-{(day or date.today()).isoformat()}"
FILES = {"json": "result.json", "markdown": "result.md", "chart": "result.png"}


def result_dir(out: str | Path, suite: str, day: date | None = None) -> Path:
    """A fresh ``<out>/<suite>-<YYYY-MM-DD>`` folder; a second run that day gets ``-2``, ``-3``..."""
    base = Path(out) / f"{suite}-{(day or date.today()).isoformat()}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def write_report(report: Report, folder: str | Path, stem: str = "result") -> dict[str, Path]:
    """Write ``<stem>.json``, ``.md`` and ``.png`` into ``folder`` (and its RUN.md); their paths by kind."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: folder / name.replace("result", stem) for kind, name in FILES.items()}
    write_text(paths["json"], json.dumps(report.to_dict(), indent=2) + "\n")
    write_text(paths["markdown"], render(report))
    if report.runs:
        write_chart(report, paths["chart"])
    else:
        del paths["chart"]
    record_run(folder)
    return paths


def read_report(path: str | Path) -> Report:
    """Read a ``result.json`` back (e.g. to re-render its markdown and chart)."""
    return Report.from_dict(json.loads(Path(path).read_text()))
