"""A new user's LoRA run on sd15 (a model no test uses), with LoRA files written by diffusers' own tooling.

1. `sdrt preset sd15` (stands in for a downloaded checkpoint) -> diffusers folder.
2. A LoRA made with PEFT on that UNet + text encoder (random B so it changes the image), saved by
   diffusers' `StableDiffusionPipeline.save_lora_weights` (diffusers format), and the same state
   converted to kohya by diffusers' `convert_state_dict_to_kohya` (kohya format).
3. `sdrt generate --lora FILE:0.8` through the CLI (the user's command), for both files.
4. The references, with the same noise (sdrt's seed -> numpy default_rng(seed).standard_normal) and
   the model's scheduler: the in-memory PEFT adapters fused at 0.8 (`fuse_lora`: what the LoRA
   means), and a fresh diffusers pipeline that reads the diffusers-format file (`load_lora_weights`
   + `fuse_lora`); PSNR of the PNGs against both, and against the base image.

    MODEL=sd15 ONNX=~/.cache/sdrt/bench/onnx/sd15 PRESET=DIR WORK=DIR python -m sdrt.bench.lora_new_user
    (tiny: MODEL=tiny FACTOR=2 SIZE=64 and a tiny export; BACKEND=openvino for that backend);
    writes WORK/result.json, WORK/RUN.md and the PNGs.
Needs torch, diffusers and peft (the dev install); sdrt itself runs torch-free in its own process.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sdrt.atomic import write_text
from sdrt.bench.provenance import record_run

#: what the run reads from the environment (recorded in RUN.md with the command)
ENV = ("MODEL", "ONNX", "WORK", "PRESET", "FACTOR", "SIZE", "BACKEND")
PROMPT, SEED, STEPS, SCALE, CFG = "a watercolor lighthouse at dusk", 7, 10, 0.8, 7.5
PY = sys.executable


def run(cmd):
    t = time.perf_counter()
    print("$", " ".join(map(str, cmd)), flush=True)
    done = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
    print(done.stdout[-2000:], done.stderr[-2000:], flush=True)
    if done.returncode:
        raise SystemExit(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"failed: {cmd}")
    return time.perf_counter() - t


def psnr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main() -> int:
    model = os.environ.get("MODEL", "sd15")
    onnx = Path(os.environ.get("ONNX", Path.home() / ".cache/sdrt/bench/onnx/sd15"))
    work = Path(os.environ.get("WORK", "lora-new-user"))
    preset = Path(os.environ.get("PRESET", work / f"{model}-preset"))
    factor = int(os.environ.get("FACTOR", 8))
    size = int(os.environ.get("SIZE", 256))
    backend = os.environ.get("BACKEND")  # sdrt generate --backend (default: sdrt's own choice)
    log = {}

    work.mkdir(parents=True, exist_ok=True)
    if not (preset / "model_index.json").is_file():
        log["preset_s"] = run([PY, "-m", "sdrt.cli", "preset", model, "--out", preset])

    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from PIL import Image
    from safetensors.torch import save_file

    torch.manual_seed(123)
    noise = np.random.default_rng(SEED).standard_normal((4, size // factor, size // factor), dtype=np.float32)[None]
    call = dict(height=size, width=size, num_inference_steps=STEPS, guidance_scale=CFG)
    pipe = StableDiffusionPipeline.from_pretrained(preset, safety_checker=None)
    base_img = pipe(PROMPT, latents=torch.from_numpy(noise), **call).images[0]
    pipe.unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"]))
    pipe.text_encoder.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian",
                                             target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)  # a trained LoRA's B is not zero
    unet_sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    te_sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder))
    StableDiffusionPipeline.save_lora_weights(work, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd,
                                              weight_name="style_diffusers.safetensors", safe_serialization=True)
    peft_sd = {**{f"unet.{k}": v for k, v in get_peft_model_state_dict(pipe.unet).items()},
               **{f"text_encoder.{k}": v for k, v in get_peft_model_state_dict(pipe.text_encoder).items()}}
    kohya = convert_state_dict_to_kohya(peft_sd)
    save_file({k: v.contiguous() for k, v in kohya.items()}, work / "style_kohya.safetensors")
    log["lora_keys"] = {"diffusers": len(unet_sd) + len(te_sd), "kohya": len(kohya),
                        "kohya_example": sorted(kohya)[:3]}
    # ground truth: the in-memory PEFT adapters fused at SCALE
    pipe.fuse_lora(lora_scale=SCALE)
    truth_img = pipe(PROMPT, latents=torch.from_numpy(noise), **call).images[0]
    del pipe
    # what diffusers makes of its own file: a fresh pipeline, load_lora_weights, fuse_lora(SCALE)
    ref = StableDiffusionPipeline.from_pretrained(preset, safety_checker=None)
    ref.load_lora_weights(work, weight_name="style_diffusers.safetensors")
    ref.fuse_lora(lora_scale=SCALE)
    ref_img = ref(PROMPT, latents=torch.from_numpy(noise), **call).images[0]
    del ref
    for name, im in (("truth", truth_img), ("diffusers_file", ref_img), ("base", base_img)):
        im.save(work / f"diffusers_{name}.png")
    log["diffusers_file_vs_truth_db"] = round(psnr(ref_img, truth_img), 2)
    log["truth_vs_base_db"] = round(psnr(truth_img, base_img), 2)

    def sdrt_run(kind):
        out = work / f"sdrt-{kind}"
        secs = run([PY, "-m", "sdrt.cli", "generate", "--model", onnx, "--prompt", PROMPT, "--seed", SEED,
                    "--height", size, "--width", size, "--steps", STEPS, "--guidance-scale", CFG,
                    "--lora", f"{work / f'style_{kind}.safetensors'}:{SCALE}", "--out", out, "--quiet",
                    *(["--backend", backend] if backend else [])])
        png = sorted(out.glob("*.png"))[-1]
        img = Image.open(png)
        return {"cli_seconds": round(secs, 1), "png": str(png),
                "psnr_vs_truth_db": round(psnr(img, truth_img), 2),
                "psnr_vs_diffusers_file_db": round(psnr(img, ref_img), 2),
                "psnr_vs_diffusers_base_db": round(psnr(img, base_img), 2),
                "parameters": img.info.get("parameters", "")}

    for kind in ("diffusers", "kohya"):
        try:
            log[kind] = sdrt_run(kind)
        except SystemExit as e:
            log[kind] = {"error": str(e)}
    print(json.dumps(log, indent=2))
    write_text(work / "result.json", json.dumps(log, indent=2) + "\n")
    record_run(work, env=ENV)
    return 0


if __name__ == "__main__":
    sys.exit(main())
