"""`sdrt bench --suite cpu-sd3` on tiny-sd3: SD3 end to end through the bench, every contender without T5."""

import json

from sdrt.bench.suites import get_suite
from sdrt.cli import main


def test_cpu_sd3_suite_is_sd35_medium_sized_and_fits_24_gb():
    suite = get_suite("cpu-sd3")
    assert (suite.model, suite.height, suite.width, suite.batches) == ("sd3.5-medium", 512, 512, (1,))
    assert suite.guidance_scale > 1 and suite.reference_precision == "fp32" and not suite.needs_gpu
    assert suite.without == ("text_encoder_3",)  # diffusers fp32 with T5-XXL: 31 GB
    assert "ort-cpu" in suite.backends and "diffusers:bf16" in suite.peers


def test_cpu_sd3_on_tiny_sd3(tiny_sd3_onnx, tmp_path):
    out = tmp_path / "results"
    rc = main(["bench", "--suite", "cpu-sd3", "--onnx", str(tiny_sd3_onnx), "--height", "64", "--width", "64",
               "--steps", "2", "--backend", "ort-cpu", "--out", str(out)])
    assert rc == 0
    [folder] = list(out.iterdir())
    data = json.loads((folder / "result.json").read_text())
    runs = {r["name"]: r for r in data["runs"]}
    assert list(runs) == ["sdrt ort-cpu", "diffusers (torch cpu, bf16 autocast)", "diffusers (torch cpu, fp32)"]
    assert runs["sdrt ort-cpu"]["psnr_db"] > 40  # both sides without T5: zeros in its place
    assert data["method"]["without"] == ["text_encoder_3"] and data["method"]["unet_batch"] == 2
    assert "text_encoder_3 by every contender" in (folder / "result.md").read_text()
