"""Presets: seeded, structurally faithful, loadable by diffusers, written atomically."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from sdrt.cli import main as sdrt_main  # noqa: E402
from sdrt.errors import SdrtError  # noqa: E402
from sdrt.export import presets  # noqa: E402


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def weights(components) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": t for k in ("text_encoder", "unet", "vae") for n, t in components[k].state_dict().items()}


@pytest.fixture(scope="module")
def tiny():
    return presets.build_pipeline("tiny", seed=0)


def test_names_and_unknown_preset():
    assert {"tiny", "tiny-sd21", "tiny-inpaint", "sd15", "sd21"} <= set(presets.preset_names())
    with pytest.raises(SdrtError, match="unknown preset 'sd9'.*tiny.*sd15.*sd21"):
        presets.get_preset("sd9")


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not(tiny):
    again = weights(presets.build_components("tiny", seed=0))
    first = weights(tiny.components)
    assert again.keys() == first.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = weights(presets.build_components("tiny", seed=1))
    params = [k for k in first if "position_ids" not in k]
    assert all(not torch.equal(first[k], other[k]) for k in params)


def test_weights_are_materialized_and_at_a_sane_scale(tiny):
    for name in ("text_encoder", "unet", "vae"):
        for pname, p in tiny.components[name].named_parameters():
            assert p.device.type == "cpu" and p.dtype == torch.float32, pname
            assert torch.isfinite(p).all(), pname
            assert p.numel() == 1 or p.std() > 0, pname
    # CLIP's position ids are a real buffer, not left on the meta device.
    buffers = dict(tiny.text_encoder.named_buffers())
    position_ids = next(b for n, b in buffers.items() if n.endswith("position_ids"))
    assert position_ids[0, :5].tolist() == [0, 1, 2, 3, 4]


def test_dtype_is_honoured():
    parts = presets.build_components("tiny", seed=0, dtype=torch.float16)
    assert {p.dtype for k in ("unet", "vae", "text_encoder") for p in parts[k].parameters()} == {torch.float16}


def test_tiny_is_structurally_sd(tiny):
    assert type(tiny).__name__ == "StableDiffusionPipeline"
    assert tiny.safety_checker is None and tiny.feature_extractor is None
    assert tiny.vae_scale_factor >= 2 and tiny.vae.config.scaling_factor == 0.18215
    unet = tiny.unet
    assert len(unet.down_blocks) >= 3 and len(unet.up_blocks) == len(unet.down_blocks)
    assert all(b.downsamplers is not None for b in unet.down_blocks[:-1])
    assert any(hasattr(b, "attentions") for b in unet.down_blocks)
    assert unet.config.cross_attention_dim == tiny.text_encoder.config.hidden_size
    assert tiny.text_encoder.config.vocab_size == len(tiny.tokenizer) == 49408
    assert tiny.tokenizer.model_max_length == 77 and tiny.tokenizer.pad_token == "<|endoftext|>"
    assert tiny.scheduler.config.prediction_type == "epsilon"
    assert n_params(unet) < 5e6


def test_tiny_generates_a_finite_non_constant_image(tiny):
    out = tiny("a photo of a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np", height=32, width=32)
    image = out.images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all() and image.std() > 0.01


def test_tiny_sd21_keeps_sd21_structure():
    parts = presets.build_components("tiny-sd21", device="meta")
    unet = parts["unet"].config
    assert unet.use_linear_projection and unet.upcast_attention
    assert isinstance(unet.attention_head_dim, (list, tuple)) and len(set(unet.attention_head_dim)) > 1
    assert parts["scheduler"].config.prediction_type == "v_prediction"
    assert parts["text_encoder"].config.hidden_act == "gelu"
    assert parts["tokenizer"].pad_token == "!" and parts["tokenizer"].pad_token_id == 0


def test_tiny_inpaint_has_a_9_channel_unet():
    pipe = presets.build_pipeline("tiny-inpaint")
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert pipe.unet.config.in_channels == 9 and pipe.unet.config.out_channels == 4


# Released parameter counts (runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1).
REAL_COUNTS = {
    "sd15": {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
    "sd21": {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863},
}


@pytest.mark.parametrize("name", ["sd15", "sd21"])
def test_real_architectures_on_the_meta_device(name):
    parts = presets.build_components(name, device="meta")  # no 4 GB of weights
    assert all(p.device.type == "meta" for k in REAL_COUNTS[name] for p in parts[k].parameters())
    assert {k: n_params(parts[k]) for k in REAL_COUNTS[name]} == REAL_COUNTS[name]
    unet, vae, text = parts["unet"].config, parts["vae"].config, parts["text_encoder"].config
    assert list(unet.block_out_channels) == [320, 640, 1280, 1280]
    assert list(vae.block_out_channels) == [128, 256, 512, 512] and vae.scaling_factor == 0.18215
    assert text.vocab_size == 49408 and text.max_position_embeddings == 77
    sched = parts["scheduler"].config
    assert (sched.beta_start, sched.beta_end, sched.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert sched.steps_offset == 1 and sched.set_alpha_to_one is False


def test_sd15_and_sd21_specifics():
    sd15 = presets.build_components("sd15", device="meta")
    assert sd15["unet"].config.cross_attention_dim == 768 and sd15["unet"].config.attention_head_dim == 8
    assert sd15["unet"].config.sample_size == 64
    t = sd15["text_encoder"].config
    assert (t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.hidden_act) == (12, 768, 12, "quick_gelu")
    s = sd15["scheduler"]
    assert type(s).__name__ == "PNDMScheduler" and s.config.skip_prk_steps and s.config.prediction_type == "epsilon"
    sd21 = presets.build_components("sd21", device="meta")
    u = sd21["unet"].config
    assert list(u.attention_head_dim) == [5, 10, 20, 20] and u.use_linear_projection and u.upcast_attention
    assert u.cross_attention_dim == 1024 and u.sample_size == 96
    t = sd21["text_encoder"].config
    assert (t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.hidden_act) == (23, 1024, 16, "gelu")
    s = sd21["scheduler"]
    assert s.config.prediction_type == "v_prediction" and s.config.clip_sample is False
    assert sd21["tokenizer"].pad_token == "!"


def test_write_preset_is_an_ordinary_diffusers_folder(tmp_path, tiny):
    out = presets.write_preset("tiny", tmp_path / "tiny", seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no temporary sibling left
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / "tokenizer" / f).is_file(), f
    loaded = diffusers.StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert loaded.safety_checker is None
    first, back = weights(tiny.components), weights(loaded.components)
    assert all(torch.equal(first[k], back[k]) for k in first)
    assert loaded.tokenizer("a cat").input_ids == [49406, 320, 2368, 49407]


def test_write_preset_refuses_an_existing_folder_and_force_replaces_it(tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SdrtError, match="already exists.*--force"):
        presets.write_preset("tiny", out)
    assert (out / "keep.txt").read_text() == "mine"
    presets.write_preset("tiny-sd21", out, force=True)
    assert not (out / "keep.txt").exists() and (out / "unet" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    class Exploding:
        def save_pretrained(self, path):
            (path / "half.bin").write_bytes(b"0" * 10)
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(presets, "build_pipeline", lambda name, seed=0: Exploding())
    with pytest.raises(SdrtError, match="disk full"):  # one line, no traceback
        presets.write_preset("tiny", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# --- the `sdrt preset` command ---------------------------------------------------------------


def test_cli_list(capsys):
    assert sdrt_main(["preset", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == presets.preset_names()


def test_cli_writes_a_preset(tmp_path, capsys):
    assert sdrt_main(["preset", "tiny-inpaint", "--out", str(tmp_path / "p"), "--seed", "3"]) == 0
    assert "tiny-inpaint" in capsys.readouterr().out
    config = json.loads((tmp_path / "p" / "unet" / "config.json").read_text())
    assert config["in_channels"] == 9


@pytest.mark.parametrize(
    "args, message",
    [
        (["preset", "sd9", "--out", "{out}"], "unknown preset 'sd9'"),
        (["preset", "tiny"], "missing --out"),
        (["preset", "--out", "{out}"], "give a preset name"),
        (["preset", "tiny", "--out", "{out}", "--seed", "-1"], "negative"),
        (["preset", "tiny", "--out", "{file}"], "already exists"),
    ],
)
def test_cli_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("x")
    argv = [a.format(out=tmp_path / "out", file=tmp_path / "file") for a in args]
    assert sdrt_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
