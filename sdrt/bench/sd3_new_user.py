"""A new user's SD3 run: a model and a T5 tokenizer no test uses, exported and generated through the CLI,
compared with diffusers on the same weights and noise.

1. The folder a user would download, made here with diffusers and transformers only (no sdrt preset code):
   an SD3-medium-style MMDiT (no qk norm, no dual attention: tiny-sd3 has both), 3 layers, 3 heads of
   16, a 96-wide joint attention the two CLIPs (32 + 48) do not fill, patch 2, position grid 24; a
   3-block VAE (factor 4) with its own scaling and shift; T5 with d_model 96 and 6 heads; the scheduler
   with shift 2.5. Weights seeded here (N(0, 1/fan_in), norms near 1) and saved in fp16, as released
   folders are. The T5 tokenizer is a SentencePiece Unigram model trained here with `sentencepiece` on
   the repository's own docs (3,000 pieces + 100 sentinels): its folder ships `spiece.model` and the
   `tokenizer.json` transformers derives from it.
2. `sdrt export --model FOLDER --out ONNX` (the CLI).
3. `sdrt generate` (the CLI) in two calls: txt2img with CFG 5, a negative prompt, `--prompt-3` different
   from the prompt, non-square; and Heun with a short `--max-sequence-length` and a long prompt.
4. diffusers' StableDiffusion3Pipeline on the same folder in fp32 with the initial noise sdrt draws for
   that seed (numpy default_rng(seed), float32); PSNR of the two PNGs; the T5 ids of sdrt's tokenizer
   against transformers' on a few prompts.

    python -m sdrt.bench.sd3_new_user --work DIR --out benchmarks/results/NAME

writes result.json, result.md, RUN.md and the PNGs into --out. Needs torch, diffusers and sentencepiece
(the dev install); sdrt itself runs torch-free in its own processes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

PY = sys.executable
TRANSFORMER = {"sample_size": 16, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 3,
               "attention_head_dim": 16, "num_attention_heads": 3, "joint_attention_dim": 96,
               "caption_projection_dim": 48, "pooled_projection_dim": 80, "pos_embed_max_size": 24}
CLIP_IDS = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
CLIP_L = {**CLIP_IDS, "hidden_size": 32, "intermediate_size": 80, "num_hidden_layers": 3, "num_attention_heads": 2,
          "projection_dim": 32, "hidden_act": "quick_gelu"}
CLIP_G = {**CLIP_IDS, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 3,
          "projection_dim": 48, "hidden_act": "gelu"}
T5 = {"d_model": 96, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 6, "relative_attention_num_buckets": 16,
      "relative_attention_max_distance": 64, "feed_forward_proj": "gated-gelu", "is_encoder_decoder": False,
      "use_cache": False, "tie_word_embeddings": False}
VAE = {"block_out_channels": [32, 64, 64], "down_block_types": ["DownEncoderBlock2D"] * 3,
       "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 1, "norm_num_groups": 32, "latent_channels": 16,
       "sample_size": 64, "scaling_factor": 1.2, "shift_factor": 0.1, "use_quant_conv": False,
       "use_post_quant_conv": False}
PIECES, EXTRA_IDS = 3000, 100
CASES = [
    {"name": "txt2img-cfg", "prompt": "a red lighthouse on a cliff at dusk", "seed": 11, "size": (64, 96),
     "args": ["--steps", "8", "--guidance-scale", "5", "--negative-prompt", "blurry, dark",
              "--prompt-3", "an oil painting of a lighthouse, warm light"],
     "diffusers": {"num_inference_steps": 8, "guidance_scale": 5.0, "negative_prompt": "blurry, dark",
                   "prompt_3": "an oil painting of a lighthouse, warm light"}},
    {"name": "heun-short-t5", "prompt": "a small boat " * 20, "seed": 5, "size": (80, 64),
     "args": ["--steps", "4", "--scheduler", "heun", "--max-sequence-length", "24", "--guidance-scale", "4"],
     "diffusers": {"num_inference_steps": 4, "guidance_scale": 4.0, "max_sequence_length": 24, "heun": True}},
]


def run(cmd: Sequence[Any]) -> float:
    started = time.perf_counter()
    print("$", " ".join(map(str, cmd)), flush=True)
    done = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
    print(done.stdout[-1500:], done.stderr[-1500:], flush=True)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(map(str, cmd))}: {done.stderr.strip()[-300:]}")
    return time.perf_counter() - started


def psnr(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def train_t5_tokenizer(folder: Path) -> Any:
    """A SentencePiece Unigram model on the repository's docs, as T5's (pad 0, eos 1, unk 2, 100 sentinels)."""
    import io

    import sentencepiece as spm
    from transformers import T5TokenizerFast

    docs = Path(__file__).resolve().parents[2] / "docs"
    lines = [line.strip() for page in sorted(docs.glob("*.md")) for line in page.read_text().splitlines()
             if len(line.strip()) > 20]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines * 3), model_writer=model, model_type="unigram",
                                   vocab_size=PIECES, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
                                   eos_piece="</s>", unk_piece="<unk>", character_coverage=1.0, num_threads=1,
                                   minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    tokenizer = T5TokenizerFast(vocab_file=str(folder / "spiece.model"), extra_ids=EXTRA_IDS, model_max_length=512)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def seeded(module: Any, generator: Any) -> Any:
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, float(np.prod(p.shape[1:])) ** -0.5, generator=generator)
            elif "norm" in name or name.endswith("weight"):
                p.normal_(1.0, 0.02, generator=generator)
            else:
                p.normal_(0.0, 0.02, generator=generator)
    return module.eval()


def write_folder(folder: Path) -> None:
    """The SD3 folder a user would download (fp16 weights), made with diffusers and transformers only."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel)

    from sdrt.export.tokenizer_files import build_clip_tokenizer

    generator = torch.Generator().manual_seed(2026)
    t5_tokenizer = train_t5_tokenizer(folder / "tokenizer_3")
    clip_l = CLIPTokenizer.from_pretrained(_saved(build_clip_tokenizer("<|endoftext|>"), folder / "tokenizer"))
    clip_g = CLIPTokenizer.from_pretrained(_saved(build_clip_tokenizer("!"), folder / "tokenizer_2"))
    pipe = StableDiffusion3Pipeline(
        transformer=seeded(SD3Transformer2DModel(**TRANSFORMER), generator),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=2.5),
        vae=seeded(AutoencoderKL(**VAE), generator),
        text_encoder=seeded(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L)), generator), tokenizer=clip_l,
        text_encoder_2=seeded(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G)), generator), tokenizer_2=clip_g,
        text_encoder_3=seeded(T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), **T5)), generator),
        tokenizer_3=t5_tokenizer)
    pipe.to(torch.float16).save_pretrained(folder)


def _saved(tokenizer: Any, folder: Path) -> Path:
    tokenizer.save_pretrained(str(folder))
    return folder


def diffusers_image(folder: Path, case: dict[str, Any]) -> Any:
    """diffusers on the folder in fp32, with the noise sdrt draws for the seed."""
    import torch
    from diffusers import FlowMatchHeunDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(case["diffusers"])
    if kwargs.pop("heun", False):
        pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)
    height, width = case["size"]
    f = pipe.vae_scale_factor
    noise = np.random.default_rng(case["seed"]).standard_normal((16, height // f, width // f), dtype=np.float32)[None]
    return pipe(case["prompt"], height=height, width=width, latents=torch.from_numpy(noise), **kwargs).images[0]


def token_ids(folder: Path, onnx: Path) -> dict[str, Any]:
    """sdrt's T5 ids (the export's tokenizer_3/tokenizer.json, tokenizers only) against transformers' on the folder."""
    from transformers import T5TokenizerFast

    from sdrt.runtime.t5_tokenizer import T5Tokenizer

    ours = T5Tokenizer.from_folder(onnx / "tokenizer_3")
    theirs = T5TokenizerFast.from_pretrained(folder / "tokenizer_3")
    prompts = ["a red lighthouse on a cliff at dusk", "", "Zürich café, naïve façade 3.5 f/1.8", "a small boat " * 40]
    same = []
    for prompt in prompts:
        want = theirs(prompt, padding="max_length", max_length=64, truncation=True).input_ids
        same.append(bool(np.array_equal(ours([prompt], 64)[0], np.asarray(want))))
    return {"prompts": len(prompts), "equal": sum(same)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdrt.bench.sd3_new_user", description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="scratch folder (the downloaded-style folder and the export)")
    parser.add_argument("--out", required=True, help="results folder (result.json, result.md, RUN.md, PNGs)")
    args = parser.parse_args(argv)
    from PIL import Image

    from sdrt.bench.environment import describe_machine
    from sdrt.bench.provenance import write_result

    work, out = Path(args.work), Path(args.out)
    folder, onnx = work / "sd3-user-folder", work / "sd3-user-onnx"
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": describe_machine(), "model": {"transformer": TRANSFORMER, "vae": VAE,
                                                                       "clip_l": CLIP_L, "clip_g": CLIP_G, "t5": T5,
                                                                       "t5_pieces": PIECES + EXTRA_IDS}}
    if not (folder / "model_index.json").is_file():
        write_folder(folder)
    if not (onnx / "sdrt.json").is_file():
        result["export_s"] = round(run([PY, "-m", "sdrt.cli", "export", "--model", folder, "--out", onnx]), 1)
    result["t5_ids"] = token_ids(folder, onnx)
    result["cases"] = []
    for case in CASES:
        height, width = case["size"]
        target = work / f"sdrt-{case['name']}"
        seconds = run([PY, "-m", "sdrt.cli", "generate", "--model", onnx, "--prompt", case["prompt"], "--seed",
                       case["seed"], "--height", height, "--width", width, "--backend", "ort-cpu", "--out", target,
                       "--quiet", *case["args"]])
        ours = Image.open(sorted(target.glob("*.png"))[-1]).convert("RGB")
        theirs = diffusers_image(folder, case)
        ours.save(out / f"{case['name']}-sdrt.png")
        theirs.save(out / f"{case['name']}-diffusers.png")
        result["cases"].append({"name": case["name"], "command_args": case["args"], "size": case["size"],
                                "cli_seconds": round(seconds, 1), "psnr_db": round(psnr(ours, theirs), 2),
                                "image_std": round(float(np.asarray(ours, np.float64).std()), 2)})
    lines = ["# SD3 as a new user would run it", "",
             "A model and a T5 tokenizer no test uses (`python -m sdrt.bench.sd3_new_user`; configs in result.json),",
             "exported and generated with the CLI, against diffusers fp32 on the same folder and noise (8-bit PNGs).", "",
             f"Machine: {result['machine']['cpu_model']}. Export: {result.get('export_s', 'reused')} s. T5 ids equal "
             f"to transformers' on {result['t5_ids']['equal']} of {result['t5_ids']['prompts']} prompts.", "",
             "| case | sdrt generate arguments | PSNR vs diffusers | CLI seconds |", "|---|---|---:|---:|"]
    lines += [f"| {c['name']} | `{' '.join(c['command_args'])}` | {c['psnr_db']} dB | {c['cli_seconds']} |"
              for c in result["cases"]]
    write_result(out, result, "\n".join(lines) + "\n")
    print(json.dumps(result["cases"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
