"""Tiled VAE decode against diffusers' `AutoencoderKL.tiled_decode` (`vae.enable_tiling()`), on tiny.

tiny's VAE has factor f = 2 and sample_size 64 px (tile 32 latent pixels). The component tests use
16 px tiles (8 latent: stride 6, 4 px blend) on a 20 x 14 latent: 4 x 3 tiles, with partial edge
tiles (2 latent pixels) in both directions; the pipeline test uses the default tile (the VAE's own
sample_size, from sdrt.json) at 96 x 128 px. Parity: PSNR >= 40 dB (measured values are printed).
"""

from __future__ import annotations

import contextlib
import shutil

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.reference import TorchReplay
from sdrt.runtime import vae_tiling
from sdrt.runtime.images import postprocess, psnr

MIN_PSNR = 40.0
TILE_PX = 16


@contextlib.contextmanager
def diffusers_tiling(vae, tile_px: int | None = None):
    """`vae.enable_tiling()` (with diffusers' own tile attributes set for `tile_px`), undone after."""
    saved = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    vae.enable_tiling()
    if tile_px is not None:
        vae.tile_sample_min_size, vae.tile_latent_min_size = tile_px, tile_px // 2
    try:
        yield vae
    finally:
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = saved


def diffusers_decode(vae, z: np.ndarray, tile_px: int | None) -> np.ndarray:
    import torch

    with diffusers_tiling(vae, tile_px), torch.inference_mode():
        return postprocess(vae.decode(torch.from_numpy(z)).sample.numpy())


def sdrt_decode(pipe, z: np.ndarray, tiles) -> np.ndarray:
    return postprocess(np.array(vae_tiling.decode(pipe.engine("vae_decoder"), z, tiles)))


def latent(h: int, w: int, n: int = 1, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4, h, w)).astype(np.float32)


def test_tiled_decode_matches_diffusers_and_differs_from_whole(pipelines, references):
    pipe, vae = pipelines("tiny"), references("tiny").modules["vae"]
    tiles = vae_tiling.tiles_for(pipe.manifest.pipeline, TILE_PX)
    assert (tiles.latent, tiles.stride, tiles.blend, tiles.keep) == (8, 6, 4, 12)
    z = latent(20, 14, n=2)
    ours, theirs = sdrt_decode(pipe, z, tiles), diffusers_decode(vae, z, TILE_PX)
    whole = sdrt_decode(pipe, z, None)
    assert ours.shape == theirs.shape == whole.shape == (2, 40, 28, 3)
    tiled_vs_diffusers, tiled_vs_whole = psnr(ours, theirs), psnr(ours, whole)
    print(f"tiled decode, 4x3 tiles: sdrt vs diffusers {tiled_vs_diffusers:.1f} dB; tiled vs whole {tiled_vs_whole:.1f} dB")
    assert tiled_vs_diffusers >= MIN_PSNR
    assert tiled_vs_whole < tiled_vs_diffusers - 20  # tiling changes the picture: the parity test can fail
    assert psnr(whole, diffusers_decode(vae, z, None)) >= MIN_PSNR  # (diffusers untiled: ours untiled)


def test_latent_within_one_tile_decodes_exactly_as_untiled(pipelines):
    pipe = pipelines("tiny")
    tiles = vae_tiling.tiles_for(pipe.manifest.pipeline, TILE_PX)
    for h, w in ((8, 8), (8, 5), (3, 8)):
        z = latent(h, w)
        assert np.array_equal(sdrt_decode(pipe, z, tiles), sdrt_decode(pipe, z, None)), (h, w)
    assert tiles.applies((1, 4, 9, 8)) and tiles.applies((1, 4, 8, 9))  # one pixel more in either: tiled


def test_pipeline_with_vae_tiling_matches_diffusers_enable_vae_tiling(pipelines, references):
    pipe, ref = pipelines("tiny"), references("tiny")
    call = dict(num_inference_steps=3, guidance_scale=7.5, height=96, width=128, scheduler="ddim")
    pipe.enable_vae_tiling()
    try:
        ours = pipe("a red bicycle", **call, generator=TorchReplay(11), output_type="np")
    finally:
        pipe.disable_vae_tiling()
    whole = pipe("a red bicycle", **call, generator=TorchReplay(11), output_type="np")
    with diffusers_tiling(ref.modules["vae"]):
        theirs = ref("a red bicycle", **call, seed=11)
    assert ours.parameters["vae_tiling"] == {"tile_size": 64, "overlap": 0.25, "tiled": True}
    assert "vae_tiling" not in whole.parameters
    quality, changed = psnr(ours.images, theirs.images), psnr(ours.images, whole.images)
    print(f"pipeline 96x128, 64 px tiles (2x3): sdrt vs diffusers {quality:.1f} dB; tiled vs whole {changed:.1f} dB")
    assert ours.images.std() > 0.01 and quality >= MIN_PSNR
    assert changed < quality - 20


def test_default_tile_size_is_the_vaes_sample_size_and_older_exports_fall_back():
    assert vae_tiling.default_tile_size({"vae_sample_size": 512, "sample_size": 96, "vae_scale_factor": 8}) == 512
    assert vae_tiling.default_tile_size({"sample_size": 64, "vae_scale_factor": 8}) == 512  # older sdrt.json
    assert vae_tiling.default_tile_size({"sample_size": 128, "vae_scale_factor": 8}) == 1024
    assert vae_tiling.default_tile_size({}) == vae_tiling.FALLBACK_TILE_PX
    tiles = vae_tiling.tiles_for({"vae_scale_factor": 8, "vae_sample_size": 512})
    assert (tiles.sample, tiles.latent, tiles.stride, tiles.blend, tiles.keep) == (512, 64, 48, 128, 384)


def test_the_export_records_the_vae_sample_size(tiny_onnx):
    from sdrt.manifest import Manifest

    assert Manifest.load(tiny_onnx).pipeline["vae_sample_size"] == 64


@pytest.mark.parametrize("size, words", [(0, "> 0"), (-16, "> 0"), (True, "> 0"), ("64", "> 0"), (12.0, "> 0"),
                                         (20, "not a multiple of 8"), (100, "e.g. 96 or 104")])
def test_bad_tile_size_is_one_line(size, words):
    with pytest.raises(SdrtError) as e:
        vae_tiling.tiles_for({"vae_scale_factor": 2, "sample_size": 32}, size)
    assert words in str(e.value) and "\n" not in str(e.value) and "vae_tile_size" in str(e.value)


def test_load_takes_vae_tiling_and_refuses_a_size_without_it(tiny_onnx):
    from sdrt.runtime import Pipeline

    with pytest.raises(SdrtError, match="needs vae_tiling=True"):
        Pipeline.load(tiny_onnx, "ort-cpu", vae_tile_size=32)
    with pytest.raises(SdrtError, match="not a multiple of 8"):
        Pipeline.load(tiny_onnx, "ort-cpu", vae_tiling=True, vae_tile_size=36)
    pipe = Pipeline.load(tiny_onnx, "ort-cpu", vae_tiling=True, vae_tile_size=32)
    try:
        assert (pipe.vae_tiles.sample, pipe.vae_tiles.latent) == (32, 16)
        out = pipe("a cat", num_inference_steps=1, height=64, width=64, seed=1, output_type="np")
        assert out.parameters["vae_tiling"] == {"tile_size": 32, "overlap": 0.25, "tiled": True}
        small = pipe("a cat", num_inference_steps=1, height=32, width=32, seed=1, output_type="np")
        assert small.parameters["vae_tiling"]["tiled"] is False  # on, but the latent fits one tile
    finally:
        pipe.close()


def test_openvino_tiled_decode_matches_diffusers(tmp_path, tiny_onnx, references):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'sdrt[openvino]')")
    from sdrt.runtime import Pipeline

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_onnx, folder, ignore=shutil.ignore_patterns("engines"))
    pipe = Pipeline.load(folder, "openvino")
    try:
        tiles = vae_tiling.tiles_for(pipe.manifest.pipeline, TILE_PX)
        z = latent(20, 14)
        quality = psnr(sdrt_decode(pipe, z, tiles), diffusers_decode(references("tiny").modules["vae"], z, TILE_PX))
    finally:
        pipe.close()
    print(f"openvino f32 tiled decode vs diffusers: {quality:.1f} dB")
    assert quality >= MIN_PSNR


def test_generate_cli_vae_tiling_is_recorded_in_the_png(tiny_onnx, tmp_path, capsys):
    import json

    from sdrt.cli import main
    from sdrt.runtime.images import read_png_text

    base = ["generate", "--model", str(tiny_onnx), "--prompt", "a cat", "--steps", "1", "--seed", "4", "--quiet",
            "--height", "64", "--width", "48"]
    assert main([*base, "--vae-tiling", "--vae-tile-size", "32", "--out", str(tmp_path / "tiled")]) == 0
    assert main([*base, "--out", str(tmp_path / "whole")]) == 0
    (tiled,), (whole,) = (tmp_path / "tiled").glob("*.png"), (tmp_path / "whole").glob("*.png")
    text = read_png_text(tiled)
    assert "VAE tiling: 32 px" in text["parameters"]
    assert json.loads(text["sdrt"])["vae_tiling"] == {"tile_size": 32, "overlap": 0.25, "tiled": True}
    assert "VAE tiling" not in read_png_text(whole)["parameters"]
    assert "vae_tiling" not in json.loads(read_png_text(whole)["sdrt"])
    assert main([*base, "--vae-tile-size", "30", "--vae-tiling", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a multiple of 8" in err and len(err.splitlines()) == 1


def test_serve_takes_vae_tiling_as_a_server_option():
    import argparse

    from sdrt.serve import commands_serve, ray_serve

    p = argparse.ArgumentParser()
    commands_serve.add_arguments(p)
    args = p.parse_args(["--model", "x", "--vae-tiling", "--vae-tile-size", "256"])
    assert commands_serve.backend_options(args) == {"vae_tiling": True, "vae_tile_size": 256}
    assert commands_serve.backend_options(p.parse_args(["--model", "x"])) == {}
    alone = commands_serve.backend_options(p.parse_args(["--model", "x", "--vae-tile-size", "256"]))
    assert alone == {"vae_tiling": False, "vae_tile_size": 256}  # Pipeline.load refuses it: needs --vae-tiling
    assert {"vae_tiling", "vae_tile_size"} <= set(ray_serve.BUILDER_DEFAULTS)
