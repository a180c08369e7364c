"""Flux as a new user would run it: a FluxPipeline no test uses, with a T5 tokenizer no test uses, through the CLI.

`python -m sdrt.bench.flux_new_user --work DIR [--results DIR]` builds, with diffusers' and
transformers' own classes (their default initialisation, no sdrt preset), a dev-style Flux folder of
widths and depths no test uses (3 single blocks, 3 heads of 16 with rope axes (4, 6, 6), a 48-wide T5
with its own SentencePiece vocabulary of 600 pieces trained here on other text, a 40-wide CLIP, a
3-block VAE: images are multiples of 8 px), and saves it with `save_pretrained`. Then it runs what a
user runs — `sdrt export --model DIR`, `sdrt generate` (txt2img with prompt_2 and true CFG, img2img)
— and compares each PNG with diffusers' own FluxPipeline / FluxImg2ImgPipeline on the folder, the
same seed (sdrt replays torch's generator: `TorchReplay`). Results (PSNR per call, what ran, the
machine) go to benchmarks/results/flux-new-user-DATE/ with RUN.md.
"""

from __future__ import annotations

import argparse
import io
import random
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

#: the folder's configs: nothing a test or a preset uses
TRANSFORMER = {"patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 3, "attention_head_dim": 16,
               "num_attention_heads": 3, "joint_attention_dim": 48, "pooled_projection_dim": 40,
               "guidance_embeds": True, "axes_dims_rope": [4, 6, 6]}
VAE = {"block_out_channels": [32, 64, 64], "down_block_types": ["DownEncoderBlock2D"] * 3,
       "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 1, "latent_channels": 16, "norm_num_groups": 32,
       "sample_size": 96, "scaling_factor": 0.41, "shift_factor": 0.07, "use_quant_conv": False,
       "use_post_quant_conv": False, "force_upcast": True}
CLIP = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
        "hidden_size": 40, "intermediate_size": 80, "num_hidden_layers": 2, "num_attention_heads": 5,
        "projection_dim": 40, "hidden_act": "quick_gelu"}
T5 = {"d_model": 48, "d_kv": 12, "d_ff": 96, "num_layers": 3, "num_heads": 4, "relative_attention_num_buckets": 16,
      "relative_attention_max_distance": 64, "feed_forward_proj": "gated-gelu", "is_encoder_decoder": False,
      "use_cache": False, "tie_word_embeddings": False}
SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
             "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
PROMPT, PROMPT_2 = "a ship in a storm, oil painting", "a three-masted ship in a storm at night, oil on canvas"


def train_t5_tokenizer(folder: Path) -> Any:
    """A T5 tokenizer of 600 SentencePiece pieces (+ 20 sentinels), trained here on made-up sentences."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    rng = random.Random(7)
    words = "ship storm sea wave night sky oil painting canvas mast sail harbor light dark boat crew wind".split()
    text = [" ".join(rng.choices(words, k=rng.randint(3, 12))) + rng.choice([".", ",", "!", ""]) for _ in range(20000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, model_type="unigram",
                                   vocab_size=600, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
                                   num_threads=1, minloglevel=2)
    (folder / "spiece.model").write_bytes(model.getvalue())
    return T5TokenizerFast.from_pretrained(str(folder), extra_ids=20, model_max_length=512)


def build_folder(out: Path) -> None:
    """The pipeline from diffusers' and transformers' classes (their own init), saved as a user saves it."""
    import diffusers
    import torch
    import transformers

    from sdrt.export.tokenizer_files import build_clip_tokenizer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_2 = train_t5_tokenizer(Path(tmp))
    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=len(tokenizer_2), **T5))
    pipe = diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=diffusers.AutoencoderKL(**VAE),
        text_encoder=transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP)),
        tokenizer=build_clip_tokenizer(), text_encoder_2=t5, tokenizer_2=tokenizer_2,
        transformer=diffusers.FluxTransformer2DModel(**TRANSFORMER))
    pipe.save_pretrained(out)


def sdrt(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "sdrt.cli", *args], check=True)


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch
    from diffusers import FluxImg2ImgPipeline, FluxPipeline
    from PIL import Image

    from sdrt.bench.environment import describe_machine
    from sdrt.bench.provenance import write_result
    from sdrt.reference import TorchReplay
    from sdrt.runtime import Pipeline
    from sdrt.runtime.images import psnr

    parser = argparse.ArgumentParser(prog="python -m sdrt.bench.flux_new_user", description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="a scratch folder (the diffusers folder, the export, the PNGs)")
    parser.add_argument("--results", default=None, help="default: benchmarks/results/flux-new-user-DATE")
    args = parser.parse_args(argv)
    work = Path(args.work)
    source, onnx, pngs = work / "flux-new-user-src", work / "flux-new-user-onnx", work / "out"
    build_folder(source)
    sdrt("export", "--model", str(source), "--out", str(onnx), "--force")
    sdrt("generate", "--model", str(onnx), "--prompt", PROMPT, "--prompt-2", PROMPT_2, "--negative-prompt", "blurry",
         "--true-cfg-scale", "2.5", "--height", "96", "--width", "136", "--steps", "6", "--seed", "5",
         "--out", str(pngs / "cli"), "--quiet")
    machine = describe_machine()
    result: dict[str, Any] = {"date": date.today().isoformat(), "machine": {k: machine[k] for k in (
        "cpu_model", "cpu_features", "logical_cores", "memory_gb", "load_average_at_start")},
        "transformer": TRANSFORMER, "vae": VAE, "clip": CLIP, "t5": T5, "t5_tokenizer": "600 SentencePiece pieces + 20 "
        "sentinels, trained by the script", "calls": []}
    ours = Pipeline.load(onnx, "ort-cpu")
    calls = {
        "txt2img, prompt_2, true CFG 2.5, 96x136, 6 steps": dict(prompt_2=PROMPT_2, negative_prompt="blurry",
                                                               true_cfg_scale=2.5, height=96, width=136,
                                                               num_inference_steps=6, guidance_scale=3.5),
        "txt2img, max_sequence_length 32, 2 images": dict(max_sequence_length=32, height=64, width=64,
                                                           num_inference_steps=4, num_images_per_prompt=2,
                                                           guidance_scale=5.0),
        "img2img, strength 0.7, 8 steps": dict(image="cli", strength=0.7, height=96, width=136, num_inference_steps=8,
                                             guidance_scale=4.0),
    }
    cli_png = next((pngs / "cli").glob("*.png"))
    for label, call in calls.items():
        reference_cls = FluxImg2ImgPipeline if "image" in call else FluxPipeline
        if "image" in call:
            call = {**call, "image": Image.open(cli_png).convert("RGB")}
        mine = ours(PROMPT, generator=TorchReplay(9), output_type="np", **call).images
        theirs = reference_cls.from_pretrained(source)
        theirs.set_progress_bar_config(disable=True)
        with torch.inference_mode():
            want = theirs(PROMPT, generator=torch.Generator().manual_seed(9), output_type="np", **call).images
        quality = psnr(np.asarray(mine), np.asarray(want))
        result["calls"].append({"call": label, "psnr_db": round(quality, 1), "shape": list(np.asarray(mine).shape)})
        print(f"{label}: {quality:.1f} dB", flush=True)
    lines = [f"# Flux as a new user would run it ({result['date']})", "",
             f"Machine: {machine['cpu_model']}, {machine['logical_cores']} cores. A FluxPipeline built with "
             f"diffusers' and transformers' classes (their own init), widths and depths no test uses, a T5 "
             f"tokenizer trained here; `sdrt export` and `sdrt generate` as a user runs them, each call compared "
             f"with diffusers' own pipeline on the folder (the same seed).", "",
             "| call | PSNR vs diffusers |", "|---|---|"]
    lines += [f"| {c['call']} | {c['psnr_db']} dB |" for c in result["calls"]]
    write_result(Path(args.results or f"benchmarks/results/flux-new-user-{result['date']}"), result,
                 "\n".join(lines) + "\n")
    return 0 if all(c["psnr_db"] >= 40 for c in result["calls"]) else 1


if __name__ == "__main__":
    sys.exit(main())
