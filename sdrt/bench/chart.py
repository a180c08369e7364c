"""The chart people look at first: per-stage bars, each sdrt backend next to PyTorch.

Two panels because the stages differ by orders of magnitude: per-call stages (text encoder,
VAE decode, end to end) on the left, per-step stages (UNet, host) on the right. Matplotlib's Agg
backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path

from sdrt.bench.results import PER_STEP, STAGES, Report

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")


def write_chart(report: Report, path: str | Path) -> Path:
    """Save the per-stage bar chart (or, for a soak, RSS over generations) as PNG; returns its path."""
    if "soak" in report.extra:
        return write_soak_chart(report, path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    path = Path(path)
    panels = [
        ("per call (ms)", [s for s in STAGES if s not in PER_STEP]),
        ("per denoising step (ms)", list(PER_STEP)),
    ]
    # The reference last, in grey-blue, so the sdrt bars read against it.
    runs = sorted(report.runs, key=lambda r: r.kind == "reference")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / max(len(runs), 1)
    for ax, (title, stages) in zip(axes, panels):
        stages = [s for s in stages if any(s in r.stages for r in runs)]
        for i, run in enumerate(runs):
            xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(stages))]
            ys = [run.stages[s].median_s * 1000 if s in run.stages else 0.0 for s in stages]
            errs = [run.stages[s].iqr_s * 500 if s in run.stages else 0.0 for s in stages]
            color = "#8c8c8c" if run.kind == "reference" else PALETTE[i % len(PALETTE)]
            bars = ax.bar(xs, ys, width, yerr=errs, capsize=3, label=run.name, color=color)
            ax.bar_label(bars, labels=[f"{y:,.0f}" if y >= 10 else f"{y:.2g}" for y in ys],
                         fontsize=7, padding=2)
        ax.set_xticks(range(len(stages)), [STAGES[s] for s in stages])
        ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
        ax.set_title(title, fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        ax.margins(y=0.15)
        ax.set_ylim(bottom=0)  # times are never negative (error bars and margins pushed it below 0)
    m = report.method
    fig.suptitle(f"sdrt bench {report.suite}: {m.get('model')} {m.get('height')}×{m.get('width')}, "
                 f"{m.get('steps')} steps, batch {m.get('batch')} — {m.get('cpu_model') if m.get('device') == 'cpu' else m.get('gpu')}",
                 fontsize=10)
    axes[0].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def write_soak_chart(report: Report, path: str | Path) -> Path:
    """RSS after each generation, with the fitted slope in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    soak = report.extra["soak"]
    series = soak["rss_mb"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(range(1, len(series) + 1), series, lw=1, color=PALETTE[0])
    ax.set_xlabel("generation")
    ax.set_ylabel("host RSS (MB)")
    ax.set_title(f"sdrt soak: {soak['generations']} generations on {report.method.get('model')}, "
                 f"slope {soak['slope_kb_per_generation']:.2f} KB/generation", fontsize=10)
    lo, hi = min(series), max(series)
    ax.set_ylim(max(0.0, lo - max(5.0, hi - lo)), hi + max(5.0, hi - lo))  # RSS is never negative
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """Write the figure atomically (a temporary sibling renamed into place), then free it."""
    import matplotlib.pyplot as plt

    from sdrt.atomic import replacing

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path
