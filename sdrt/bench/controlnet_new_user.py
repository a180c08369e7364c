"""A new user's ControlNet and IP-Adapter run: a base, a ControlNet and an IP-Adapter no test uses, exported and
generated through the CLI, compared with diffusers on the same weights and noise.

1. The folders a user would download, made here with diffusers and transformers only (no sdrt preset code):
   an SD 1.x-style base with a 2-block UNet (24/48 channels, 2 layers per block, per-block heads 3 and 6,
   cross-attention width 40, 8 norm groups), a 3-block VAE (factor 4, scaling 0.25), a 3-layer CLIP text
   encoder of width 40 and DDIM (no clip_sample) as its scheduler; a ControlNetModel for it (from_unet) with
   a 3-stage conditioning embedding of 8/12/24 channels (the 4x downscale of this VAE); an IP-Adapter in
   h94/IP-Adapter's layout (`ip-adapter_sd15.safetensors` + `image_encoder/`) with a CLIP vision encoder of
   its own (40 px, patch 10, width 48, 6 heads, projection 24). Every weight is seeded here
   (N(0, 1/fan_in), norms near 1), the ControlNet's zero convolutions included (at zero it would change
   nothing and prove nothing); base and ControlNet are saved in fp16, as released folders are.
2. `sdrt export --model FOLDER --out ONNX` (the CLI) of the base, the ControlNet and the IP-Adapter.
3. `sdrt generate` (the CLI) with `--controlnet DIR:SCALE --control-image PNG --preprocess none`: once with a
   window (`--control-end`), a negative prompt and a non-square size; once with the IP-Adapter as well
   (`--ip-adapter DIR --ip-image PNG --ip-scale X`).
4. diffusers' StableDiffusionControlNetPipeline on the same folders in fp32 (load_ip_adapter for the second
   case) with the initial noise sdrt draws for that seed (numpy default_rng(seed), float32); PSNR of the
   two PNGs ("identical" when every pixel is equal), and how far the ControlNet and the IP-Adapter move
   diffusers' image (PSNR against the same call at scale 0 and at --ip-scale 0).

    python -m sdrt.bench.controlnet_new_user --work DIR --out benchmarks/results/NAME

writes result.json, result.md, RUN.md and the PNGs into --out. Needs torch and diffusers (the dev install);
sdrt itself runs torch-free in its own processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sdrt.bench.sd3_new_user import _saved, psnr, run, seeded

PY = sys.executable
UNET = {"sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": [24, 48],
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 2,
        "cross_attention_dim": 40, "attention_head_dim": [3, 6], "norm_num_groups": 8}
CONDITIONING_CHANNELS = [8, 12, 24]  # 3 stages: the control image downscaled 4x, as this VAE's latents
VAE = {"block_out_channels": [16, 32, 32], "down_block_types": ["DownEncoderBlock2D"] * 3,
       "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 1, "norm_num_groups": 16,
       "latent_channels": 4, "sample_size": 64, "scaling_factor": 0.25}
TEXT = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
        "hidden_size": 40, "intermediate_size": 80, "num_hidden_layers": 3, "num_attention_heads": 5,
        "projection_dim": 40, "hidden_act": "quick_gelu"}
SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
             "set_alpha_to_one": False, "steps_offset": 1}
VISION = {"hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 6,
          "image_size": 40, "patch_size": 10, "projection_dim": 24}
IP_WEIGHTS, IP_TOKENS = "ip-adapter_sd15.safetensors", 4
CASES = [
    {"name": "controlnet-window", "prompt": "a lighthouse on a rock", "seed": 3, "size": (48, 64),
     "args": ["--steps", "6", "--guidance-scale", "6", "--negative-prompt", "fog", "--control-end", "0.75"],
     "scale": 0.8, "ip_scale": None,
     "diffusers": {"num_inference_steps": 6, "guidance_scale": 6.0, "negative_prompt": "fog",
                   "control_guidance_end": 0.75}},
    {"name": "controlnet-ip-adapter", "prompt": "a boat in a harbour", "seed": 8, "size": (64, 48),
     "args": ["--steps", "5", "--guidance-scale", "4.5"], "scale": 1.2, "ip_scale": 0.7,
     "diffusers": {"num_inference_steps": 5, "guidance_scale": 4.5}},
]


def decibels(value: float) -> float | str:
    """Rounded dB; "identical" for equal PNGs (JSON has no infinity)."""
    return "identical" if value == float("inf") else round(value, 2)


def shown(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value} dB"


def control_image(height: int, width: int) -> Any:
    """A white disc and bar on black, the kind of picture a user passes with --preprocess none."""
    from PIL import Image

    y, x = np.mgrid[:height, :width]
    disc = (y - height * 0.4) ** 2 + (x - width * 0.6) ** 2 < (min(height, width) * 0.25) ** 2
    bar = (y > height * 0.75) & (x > width * 0.1) & (x < width * 0.5)
    return Image.fromarray(np.where(disc | bar, 255, 0).astype(np.uint8)).convert("RGB")


def ip_image() -> Any:
    from PIL import Image

    rng = np.random.default_rng(4)
    return Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))


def write_folders(base: Path, controlnet: Path, ip_adapter: Path) -> None:
    """The base, ControlNet and IP-Adapter folders a user would download, made with diffusers and transformers only."""
    import torch
    from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from safetensors.torch import save_file
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    from sdrt.export.tokenizer_files import build_clip_tokenizer

    generator = torch.Generator().manual_seed(2027)
    unet = seeded(UNet2DConditionModel(**UNET), generator)
    pipe = StableDiffusionPipeline(
        vae=seeded(AutoencoderKL(**VAE), generator),
        text_encoder=seeded(CLIPTextModel(CLIPTextConfig(**TEXT)), generator),
        tokenizer=CLIPTokenizer.from_pretrained(_saved(build_clip_tokenizer("<|endoftext|>"), base / "tokenizer")),
        unet=unet, scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(base)
    net = ControlNetModel.from_unet(unet.float(), conditioning_embedding_out_channels=tuple(CONDITIONING_CHANNELS),
                                    load_weights_from_unet=False)
    seeded(net, generator).to(torch.float16).save_pretrained(controlnet)

    encoder = seeded(CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)), generator)
    encoder.save_pretrained(ip_adapter / "image_encoder")
    width, embed = UNET["cross_attention_dim"], VISION["projection_dim"]

    def normal(*shape: int, std: float, mean: float = 0.0) -> Any:
        return torch.empty(shape).normal_(mean, std, generator=generator)

    state = {"image_proj.proj.weight": normal(IP_TOKENS * width, embed, std=embed ** -0.5),
             "image_proj.proj.bias": normal(IP_TOKENS * width, std=0.1),
             "image_proj.norm.weight": normal(width, std=0.1, mean=1.0), "image_proj.norm.bias": normal(width, std=0.1)}
    cross = [name.rsplit(".processor", 1)[0] for name in unet.attn_processors if name.endswith("attn2.processor")]
    for k, name in enumerate(cross):  # diffusers numbers the cross-attention layers 1, 3, 5, ...
        hidden = unet.get_submodule(name).to_k.out_features
        for which in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{2 * k + 1}.{which}.weight"] = normal(hidden, width, std=2.0 * width ** -0.5)
    save_file(state, str(ip_adapter / IP_WEIGHTS))


def diffusers_image(base: Path, controlnet: Path, ip_adapter: Path, case: dict[str, Any], scale: float,
                    ip_scale: float | None = None) -> Any:
    """diffusers' StableDiffusionControlNetPipeline on the folders in fp32, with the noise sdrt draws for the seed."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        base, controlnet=ControlNetModel.from_pretrained(controlnet, torch_dtype=torch.float32),
        torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(case["diffusers"])
    if case["ip_scale"] is not None:
        pipe.load_ip_adapter(str(ip_adapter), subfolder="", weight_name=IP_WEIGHTS, torch_dtype=torch.float32)
        pipe.set_ip_adapter_scale(case["ip_scale"] if ip_scale is None else ip_scale)
        kwargs["ip_adapter_image"] = ip_image()
    height, width = case["size"]
    f = pipe.vae_scale_factor
    noise = np.random.default_rng(case["seed"]).standard_normal((4, height // f, width // f), dtype=np.float32)[None]
    return pipe(case["prompt"], image=control_image(height, width), height=height, width=width,
                latents=torch.from_numpy(noise), controlnet_conditioning_scale=scale, **kwargs).images[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdrt.bench.controlnet_new_user",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="scratch folder (the downloaded-style folders and the exports)")
    parser.add_argument("--out", required=True, help="results folder (result.json, result.md, RUN.md, PNGs)")
    args = parser.parse_args(argv)
    from PIL import Image

    from sdrt.bench.environment import describe_machine
    from sdrt.bench.provenance import write_result

    work, out = Path(args.work), Path(args.out)
    base, net, ip = work / "base", work / "controlnet", work / "ip-adapter"
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": describe_machine(), "model": {
        "unet": UNET, "vae": VAE, "text_encoder": TEXT, "scheduler": SCHEDULER,
        "controlnet_conditioning_embedding_out_channels": CONDITIONING_CHANNELS, "ip_adapter_vision": VISION}}
    if not (base / "model_index.json").is_file():
        write_folders(base, net, ip)
    result["export_s"] = {}
    for source in (base, net, ip):
        onnx = work / f"{source.name}-onnx"
        if not (onnx / "sdrt.json").is_file():
            result["export_s"][source.name] = round(run([PY, "-m", "sdrt.cli", "export", "--model", source,
                                                         "--out", onnx]), 1)
    control_png, ip_png = work / "control.png", work / "ip.png"
    ip_image().save(ip_png)
    result["cases"] = []
    for case in CASES:
        height, width = case["size"]
        control_image(height, width).save(control_png)
        target = work / f"sdrt-{case['name']}"
        extra = ["--controlnet", f"{work / 'controlnet-onnx'}:{case['scale']}", "--control-image", control_png,
                 "--preprocess", "none"]
        if case["ip_scale"] is not None:
            extra += ["--ip-adapter", work / "ip-adapter-onnx", "--ip-image", ip_png, "--ip-scale", case["ip_scale"]]
        seconds = run([PY, "-m", "sdrt.cli", "generate", "--model", work / "base-onnx", "--prompt", case["prompt"],
                       "--seed", case["seed"], "--height", height, "--width", width, "--backend", "ort-cpu",
                       "--out", target, "--quiet", *case["args"], *extra])
        ours = Image.open(sorted(target.glob("*.png"))[-1]).convert("RGB")
        theirs = diffusers_image(base, net, ip, case, case["scale"])
        unsteered = diffusers_image(base, net, ip, case, 0.0)
        no_ip = diffusers_image(base, net, ip, case, case["scale"], ip_scale=0.0) if case["ip_scale"] else None
        ours.save(out / f"{case['name']}-sdrt.png")
        theirs.save(out / f"{case['name']}-diffusers.png")
        shown_args = [*case["args"], "--controlnet", f"DIR:{case['scale']}"]
        shown_args += [] if case["ip_scale"] is None else ["--ip-adapter", "DIR", "--ip-scale", str(case["ip_scale"])]
        result["cases"].append({"name": case["name"], "command_args": shown_args,
                                "size": case["size"], "cli_seconds": round(seconds, 1),
                                "psnr_db": decibels(psnr(ours, theirs)),
                                "diffusers_scale_0_psnr_db": decibels(psnr(unsteered, theirs)),
                                "diffusers_ip_scale_0_psnr_db": None if no_ip is None
                                else decibels(psnr(no_ip, theirs)),
                                "image_std": round(float(np.asarray(ours, np.float64).std()), 2)})
    lines = ["# ControlNet and IP-Adapter as a new user would run them", "",
             "A base, a ControlNet and an IP-Adapter no test uses (`python -m sdrt.bench.controlnet_new_user`;",
             "configs in result.json), exported and generated with the CLI, against diffusers'",
             "StableDiffusionControlNetPipeline fp32 on the same folders and noise (8-bit PNGs). The last column is",
             "how far the ControlNet moves diffusers'",
             "image: its PSNR against the same call at ControlNet scale 0 (low = it steers); for the IP-Adapter case,",
             "the same at --ip-scale 0 in brackets.", "",
             f"Machine: {result['machine']['cpu_model']}. Export seconds: {result['export_s'] or 'reused'}.", "",
             "| case | sdrt generate arguments | PSNR vs diffusers | CLI seconds | diffusers: scale 0 vs scale (IP) |",
             "|---|---|---:|---:|---:|"]
    for c in result["cases"]:
        ip_db = c["diffusers_ip_scale_0_psnr_db"]
        lines.append(f"| {c['name']} | `{' '.join(c['command_args'])}` | {shown(c['psnr_db'])} | {c['cli_seconds']} | "
                     f"{shown(c['diffusers_scale_0_psnr_db'])}{'' if ip_db is None else f' ({shown(ip_db)})'} |")
    write_result(out, result, "\n".join(lines) + "\n")
    print(json.dumps(result["cases"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
