"""`sdrt bench` end to end on the tiny preset: reports written, parity kept, refusals in one line."""

import json

import pytest

from sdrt.cli import main
from tests.conftest import nvidia_gpu


def test_cpu_quick_end_to_end(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "results"
    rc = main(["bench", "--suite", "cpu-quick", "--onnx", str(tiny_onnx), "--reps", "1", "--warmup", "0",
               "--steps", "2", "--out", str(out)])
    assert rc == 0
    [folder] = list(out.iterdir())
    assert folder.name.startswith("cpu-quick-")
    data = json.loads((folder / "result.json").read_text())
    kinds = {r["kind"]: r for r in data["runs"]}
    assert set(kinds) == {"sdrt", "reference"}
    sdrt, ref = kinds["sdrt"], kinds["reference"]
    assert sdrt["backend"] == "ort-cpu" and ref["backend"] == "torch-cpu"
    assert sdrt["psnr_db"] > 40  # same weights, same latents: the same images
    assert sdrt["stages"]["unet_step"]["n"] == ref["stages"]["unet_step"]["n"] > 0
    assert data["method"]["steps"] == 2 and data["method"]["reps"] == 1
    assert data["method"]["scheduler"] == "PNDMScheduler"
    assert "sdrt ort-cpu" in data["speedup_vs_reference"]
    md = (folder / "result.md").read_text()
    assert "## Method" in md and "end to end" in md
    assert (folder / "result.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out


def test_soak_reports_a_slope(tiny_onnx, tmp_path):
    out = tmp_path / "soak"
    rc = main(["bench", "--suite", "soak", "--onnx", str(tiny_onnx), "--generations", "20", "--warmup", "2",
               "--steps", "2", "--out", str(out)])
    assert rc == 0
    [folder] = list(out.iterdir())
    data = json.loads((folder / "result.json").read_text())
    soak = data["extra"]["soak"]
    assert soak["generations"] == 20 and len(soak["rss_mb"]) == 20
    assert isinstance(soak["slope_kb_per_generation"], float)
    assert [r["kind"] for r in data["runs"]] == ["sdrt"]
    assert data["runs"][0]["stages"]["end_to_end"]["n"] == 20
    assert "KB/generation" in (folder / "result.md").read_text()


@pytest.mark.skipif(nvidia_gpu() is not None, reason="a GPU is present: the GPU suites run here")
@pytest.mark.parametrize("suite", ["gpu-sd15", "gpu-sd21"])
def test_gpu_suites_refuse_without_a_gpu(suite, tmp_path, capsys):
    assert main(["bench", "--suite", suite, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs an NVIDIA GPU" in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("args, message", [
    (["--suite", "cpu-quick", "--reps", "0"], "--reps 0"),
    (["--suite", "cpu-quick", "--batch", "0"], "--batch 0"),
    (["--suite", "cpu-quick", "--steps", "0"], "--steps 0"),
    (["--suite", "soak", "--generations", "1"], "--generations 1"),
    (["--suite", "cpu-quick", "--threads", "0"], "--threads 0"),
    (["--suite", "cpu-quick", "--tuning", "warp"], "tuning preset 'warp'"),
    (["--suite", "cpu-quick", "--backend", "ort-cpu:cuda_graph"], "backend ort-cpu has no option 'cuda_graph'"),
])
def test_bad_arguments_are_one_line_errors(args, message, tiny_onnx, tmp_path, capsys):
    assert main(["bench", *args, "--onnx", str(tiny_onnx), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_onnx_folder_of_another_preset_is_refused(tmp_path, capsys):
    folder = tmp_path / "fake"
    folder.mkdir()
    (folder / "sdrt.json").write_text(json.dumps({
        "format": "sdrt-onnx", "format_version": 1, "source": {"kind": "preset", "name": "tiny"},
        "pipeline": {"latent_channels": 4, "unet_in_channels": 4, "text_hidden_size": 32, "vae_scale_factor": 2,
                     "token_length": 77, "sample_size": 32},
        "components": {"unet": {"file": "unet/model.onnx", "precision": "fp32"}},
        "sizes": {"latent_multiple": 1, "min_latent": 3, "max_latent": 256}}))
    assert main(["bench", "--suite", "cpu-sd15", "--onnx", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert "not 'sd15'" in capsys.readouterr().err


def test_a_backend_can_be_timed_with_an_option_on():
    from sdrt.bench.plan import split_contender
    from sdrt.bench.suites import get_suite

    assert split_contender("ort-cuda:cuda_graph") == ("ort-cuda", {"cuda_graph": True})
    assert split_contender("ort-cpu") == ("ort-cpu", {})
    assert get_suite("gpu-sd15").backends == ("ort-cuda", "ort-cuda:cuda_graph")


def test_fault_soak_small(tiny_onnx, tmp_path, capsys):
    """A short fault soak: threads + bad inputs, no crash, every good output equals its serial twin."""
    import json as _json

    assert main(["bench", "--suite", "fault-soak", "--onnx", str(tiny_onnx), "--generations", "12",
                 "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("fault-soak-*/result.json")
    data = _json.loads(result.read_text())
    assert data["crashes"] == 0 and data["good_equal"] == data["good"] == 9 and data["bad_one_line"] == 3
