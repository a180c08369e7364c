"""`sdrt bench --suite cpu-sdxl` on tiny-sdxl: the SDXL family end to end through the bench.

The tests' tiny-sdxl export comes from a diffusers *folder* (the preset written out), the way a
real SDXL export does, so this is also `--onnx DIR` for a folder-sourced export.
"""

import json

from sdrt.bench.suites import get_suite
from sdrt.cli import main


def test_cpu_sdxl_suite_is_sdxl_sized_and_affordable():
    suite = get_suite("cpu-sdxl")
    assert (suite.model, suite.height, suite.width, suite.batches) == ("sdxl", 512, 512, (1,))
    assert suite.scheduler == "EulerDiscreteScheduler" and suite.guidance_scale > 1  # CFG on: UNet batch 2
    assert suite.reference_precision == "fp32" and not suite.needs_gpu
    assert "ort-cpu" in suite.backends and "diffusers:bf16" in suite.peers


def test_cpu_sdxl_on_tiny_sdxl(tiny_sdxl_onnx, tmp_path):
    out = tmp_path / "results"
    rc = main(["bench", "--suite", "cpu-sdxl", "--onnx", str(tiny_sdxl_onnx), "--height", "64", "--width", "64",
               "--steps", "2", "--reps", "1", "--warmup", "0", "--out", str(out)])
    assert rc == 0
    [folder] = list(out.iterdir())
    assert folder.name.startswith("cpu-sdxl-")
    data = json.loads((folder / "result.json").read_text())
    runs = {r["name"]: r for r in data["runs"]}
    assert list(runs) == ["sdrt ort-cpu", "diffusers (torch cpu, bf16 autocast)", "diffusers (torch cpu, fp32)"]
    sdrt = runs["sdrt ort-cpu"]
    assert sdrt["psnr_db"] > 40  # SDXL conditioning (2 encoders, pooled embeds, time ids) the same both sides
    assert runs["diffusers (torch cpu, bf16 autocast)"]["psnr_db"] is not None
    method = data["method"]
    assert method["scheduler"] == "EulerDiscreteScheduler" and method["guidance_scale"] == 5.0
    assert method["unet_batch"] == 2 and method["height"] == 64
    assert method["model"].startswith("src-tiny-sdxl")  # the folder it was exported from
    assert "malloc_trim" in method["memory_release"]
    # one contender in memory at a time: what the sdrt run loaded is handed back before PyTorch loads
    assert all(r["host_rss_after_close_mb"] is not None for r in data["runs"])
    assert sdrt["host_rss_after_close_mb"] < sdrt["host_rss_peak_mb"] - 0.25 * sdrt["host_rss_growth_mb"]
    md = (folder / "result.md").read_text()
    assert "host RSS after close (MB)" in md and "memory release" in md
    assert (folder / "result.png").read_bytes()[:4] == b"\x89PNG"
