"""The report writers: the JSON schema's fields, the markdown's method section, the PNG chart."""

import json

import pytest

from sdrt.bench.environment import describe_machine
from sdrt.bench.output import read_report, result_dir, write_report
from sdrt.bench.results import STAGES, CallTimes, Report, RunResult, summarize_calls


def _calls(scale: float, n: int = 3) -> list[CallTimes]:
    return [CallTimes(text_encoder_s=0.01 * scale, unet_steps_s=[0.1 * scale] * 4,
                      host_steps_s=[0.02 * scale] * 4, vae_decode_s=0.2 * scale,
                      end_to_end_s=(0.01 + 0.48 + 0.2) * scale + 0.001 * i) for i in range(n)]


def _run(name: str, kind: str, scale: float, psnr=None) -> RunResult:
    return RunResult(name=name, kind=kind, backend="ort-cpu" if kind == "sdrt" else "torch-cpu",
                     precision="fp32", load_s=1.0 * scale, stages=summarize_calls(_calls(scale)),
                     images_per_call=1, host_rss_peak_mb=900.0, host_rss_growth_mb=300.0, psnr_db=psnr)


@pytest.fixture
def report() -> Report:
    method = describe_machine() | {
        "model": "tiny", "onnx_folder": "/tmp/x", "precision": {"unet": "fp32"}, "height": 64,
        "width": 64, "latent_shape": [1, 4, 8, 8], "batch": 1, "unet_batch": 2, "steps": 4,
        "scheduler": "PNDMScheduler", "guidance_scale": 7.5, "prompt": "a cat", "seed": 0,
        "warmup": 1, "reps": 3, "date": "2026-11-21T12:00:00", "threads": "intra-op 2",
    }
    return Report(suite="cpu-quick", created="2026-11-21T12:00:00", method=method,
                  runs=[_run("sdrt ort-cpu", "sdrt", 1.0, psnr=52.5),
                        _run("diffusers (torch cpu, fp32)", "reference", 2.0)])


def test_call_times_from_stage_timings():
    from sdrt.runtime.timing import StageTimings

    t = StageTimings(text_encoder=0.1, unet_steps=[0.2, 0.3, 0.4], host_steps=[0.01, -1e-9],
                     vae_decoder=0.5, total=1.5)
    c = CallTimes.from_stage_timings(t, end_to_end_s=1.6)
    assert c.unet_steps_s == [0.2, 0.3, 0.4] and c.host_steps_s == [0.01, 0.0]
    assert (c.text_encoder_s, c.vae_decode_s, c.end_to_end_s) == (0.1, 0.5, 1.6)
    with pytest.raises(ValueError):
        CallTimes(0.0, [0.1], [0.1, 0.2], 0.0, 0.0)


def test_speedup_is_reference_over_sdrt(report):
    sp = report.speedups()["sdrt ort-cpu"]
    assert sp["unet_step"] == pytest.approx(2.0)
    assert sp["load"] == pytest.approx(2.0)
    assert sp["end_to_end"] == pytest.approx(2.0, rel=0.01)


def test_json_has_every_schema_field_and_reads_back(report, tmp_path):
    paths = write_report(report, tmp_path / "r")
    data = json.loads(paths["json"].read_text())
    assert data["schema"] == "sdrt-bench" and data["schema_version"] == 1
    for key in ("suite", "created", "method", "runs", "speedup_vs_reference"):
        assert key in data
    for key in ("cpu_model", "physical_cores", "versions", "height", "steps", "batch", "reps"):
        assert key in data["method"]
    run = data["runs"][0]
    for key in ("name", "kind", "backend", "precision", "load_s", "stages", "images_per_s",
                "host_rss_peak_mb", "gpu_peak_mb", "psnr_db"):
        assert key in run
    assert set(run["stages"]) == set(STAGES)
    assert set(run["stages"]["unet_step"]) >= {"median_s", "iqr_s", "n"}
    assert run["stages"]["unet_step"]["n"] == 12  # 4 steps x 3 calls, pooled
    back = read_report(paths["json"])
    assert back.speedups() == report.speedups()


def test_markdown_has_table_and_method(report, tmp_path):
    md = write_report(report, tmp_path)["markdown"].read_text()
    assert "| UNet / step (per step) |" in md
    assert "2.00×" in md  # the UNet speedup
    assert "52.5" in md  # PSNR next to the speed
    assert "## Method" in md
    for fact in ("AMD" if "AMD" in report.method["cpu_model"] else report.method["cpu_model"],
                 "onnxruntime", "torch", "diffusers", "numpy", "4 steps", "PNDMScheduler",
                 "64×64", "batch 1", "1 warm-up", "3 timed", "2026-11-21"):
        assert fact in md, fact


def test_chart_is_a_png(report, tmp_path):
    png = write_report(report, tmp_path)["chart"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5000


def test_result_dir_never_reuses_a_folder(tmp_path):
    first = result_dir(tmp_path, "cpu-quick")
    first.mkdir()
    second = result_dir(tmp_path, "cpu-quick")
    assert second != first and second.name.startswith(first.name)


def test_read_report_refuses_other_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"schema": "other"}')
    with pytest.raises(ValueError):
        read_report(p)


def test_chart_y_axes_start_at_zero(report, tmp_path, monkeypatch):
    """Wide error bars once pushed the time axis below 0: every axis now starts at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure

    seen = []
    real = matplotlib.figure.Figure.savefig

    def spy(self, *a, **k):
        seen.extend(ax.get_ylim()[0] for ax in self.axes)
        return real(self, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    write_report(report, tmp_path)
    assert seen and min(seen) == 0
