"""The human-readable report: a per-stage table, sdrt against PyTorch, and the method under it.

Written the way benchmark tables are read: medians with their spread, a speedup column, the
quality check (PSNR) next to the speed, and everything needed to reproduce the numbers.
"""

from __future__ import annotations

from typing import Any

from sdrt.bench.results import PER_STEP, STAGES, Report, RunResult


def _ms(seconds: float) -> str:
    ms = seconds * 1000.0
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def _cell(run: RunResult, stage: str) -> str:
    s = run.stages.get(stage)
    if s is None:
        return "–"
    return f"{_ms(s.median_s)} ± {_ms(s.iqr_s / 2)}" if s.n > 1 else _ms(s.median_s)


def _x(value: float | None) -> str:
    return f"{value:.2f}×" if value is not None else "–"


def stage_table(report: Report) -> list[str]:
    """Rows: stages, then load, memory, throughput and PSNR; columns: every run, then speedups."""
    runs = report.runs
    speed = report.speedups()
    contenders = [r for r in runs if r.kind != "reference"]
    head = ["stage (ms, median ± IQR/2)"] + [r.name for r in runs]
    head += [f"speedup {r.name}" for r in contenders] if report.reference else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label: str, cells: list[str], speedups: list[str]) -> None:
        lines.append("| " + " | ".join([label] + cells + (speedups if report.reference else [])) + " |")

    for stage, label in STAGES.items():
        if not any(stage in r.stages for r in runs):
            continue
        row(label + (" (per step)" if stage in PER_STEP else ""),
            [_cell(r, stage) for r in runs],
            [_x(speed.get(r.name, {}).get(stage)) for r in contenders])
    row("load (s)", [f"{r.load_s:.2f}" for r in runs],
        [_x(speed.get(r.name, {}).get("load")) for r in contenders])
    row("images / s", [f"{r.images_per_s:.3g}" for r in runs],
        [_x(speed.get(r.name, {}).get("end_to_end")) for r in contenders])
    row("host RSS peak (MB)", [f"{r.host_rss_peak_mb:,.0f}" for r in runs], ["" for _ in contenders])
    row("host RSS growth (MB)", [f"{r.host_rss_growth_mb:,.0f}" for r in runs], ["" for _ in contenders])
    if any(r.host_rss_after_close_mb is not None for r in runs):
        row("host RSS after close (MB)", [f"{r.host_rss_after_close_mb:,.0f}" if r.host_rss_after_close_mb is not None
                                          else "–" for r in runs], ["" for _ in contenders])
    if any(r.gpu_peak_mb is not None for r in runs):
        row("GPU peak (MB)", [f"{r.gpu_peak_mb:,.0f}" if r.gpu_peak_mb is not None else "–" for r in runs],
            ["" for _ in contenders])
    row("PSNR vs PyTorch (dB)", [f"{r.psnr_db:.1f}" if r.psnr_db is not None else "–" for r in runs],
        ["" for _ in contenders])
    if any(r.psnr_bf16_db is not None for r in runs):
        row("PSNR vs diffusers bf16 (dB)",
            [f"{r.psnr_bf16_db:.1f}" if r.psnr_bf16_db is not None else "–" for r in runs],
            ["" for _ in contenders])
    return lines


def method_lines(method: dict[str, Any]) -> list[str]:
    """The method section: machine, versions, model, shapes and the measurement protocol."""
    m = method
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)
    precision = m.get("precision", {})
    precision_text = ", ".join(f"{k} {v}" for k, v in precision.items()) if isinstance(precision, dict) else precision
    items = [
        ("device", m.get("gpu") or f"CPU only ({m.get('device', 'cpu')})"),
        ("CPU", f"{m.get('cpu_model')} — {m.get('physical_cores')} physical / "
                f"{m.get('logical_cores')} logical cores, {', '.join(m.get('cpu_features', []))}"),
        ("memory", f"{m.get('memory_gb')} GB"),
        ("machine load", f"1/5/15-min load average {m.get('load_average_at_start')} at start, "
                         f"{m.get('load_average_at_end')} at end (the CPU is shared: a load above the "
                         f"core count slows both contenders, PyTorch's OpenMP threads most)"),
        ("OS / Python", f"{m.get('os')} / Python {m.get('python')}"),
        ("versions", versions),
        ("model", f"{m.get('model')} (ONNX folder {m.get('onnx_folder')})"),
        ("precision", precision_text),
        ("left out", f"{', '.join(m['without'])} by every contender (diffusers: loaded as None; sdrt: "
                     f"Pipeline.load(without=...))" if m.get("without") else None),
        ("shapes", f"{m.get('height')}×{m.get('width')} px, latents {m.get('latent_shape')}, "
                   f"batch {m.get('batch')} (UNet batch {m.get('unet_batch')} with guidance)"),
        ("sampling", f"{m.get('steps')} steps, {m.get('scheduler')}, guidance {m.get('guidance_scale')}, "
                     f"prompt {m.get('prompt')!r}, the same injected latents (numpy seed {m.get('seed')})"),
        ("protocol", f"{m.get('warmup')} warm-up call(s), then {m.get('reps')} timed call(s) per contender, "
                     "one process, sdrt first (before torch is imported), then PyTorch; "
                     "medians, spread = interquartile range; per-step stages pool every step of every call"),
        ("memory release", m.get("memory_release")),
        ("threads", m.get("threads")),
        ("date", m.get("date")),
    ]
    return [f"- **{k}**: {v}" for k, v in items if v not in (None, "", "None")]


def render(report: Report) -> str:
    """The whole markdown report."""
    lines = [f"# sdrt benchmark: {report.suite}", ""]
    ref = report.reference
    for run in report.runs:
        if run.kind == "reference" or ref is None:
            continue
        e2e = report.speedups()[run.name].get("end_to_end")
        psnr = f", PSNR {run.psnr_db:.1f} dB vs PyTorch" if run.psnr_db is not None else ""
        lines.append(f"**{run.name}**: {_x(e2e)} end to end against {ref.name}{psnr}.")
    soak = report.extra.get("soak")
    if soak:
        lines.append(f"**soak**: RSS {soak['rss_first_mb']:.1f} MB after the first timed generation, "
                     f"{soak['rss_last_mb']:.1f} MB after generation {soak['generations']} "
                     f"(max {soak['rss_max_mb']:.1f}); least-squares slope "
                     f"**{soak['slope_kb_per_generation']:.2f} KB/generation**.")
    lines += ["", *stage_table(report), "", "## Method", "", *method_lines(report.method)]
    notes = report.method.get("notes")
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"
