"""Quality checks a program can do on the trained `shapes` preset, through sdrt's own runtime.

- prompt following: generate each caption, run the detector (background colour, colour and shape
  of the largest blob: `sdrt.export.shapes_data.detect`) and count the images it agrees with;
- img2img at low strength keeps the input's layout: the detector finds the input's scene again and
  the output stays close to the input (PSNR);
- inpainting keeps the unmasked area (PSNR over the pixels outside the mask);
- VAE reconstruction (sdrt's vae_encoder -> vae_decoder) of held-out images (PSNR).

`evaluate(pipe)` returns all four as a dict; the tests assert bounds on it, `python -m
sdrt.bench.shapes_quality MODEL_DIR` prints it (the README's numbers). Torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from sdrt.export import shapes_data
from sdrt.export.shapes_data import Scene

#: one background per (colour, shape): the next colour of the palette, so every colour and shape appears
QUICK_SCENES = [Scene(c, s, shapes_data.COLOURS[(i + j + 1) % len(shapes_data.COLOURS)])
                for i, c in enumerate(shapes_data.COLOURS) for j, s in enumerate(shapes_data.SHAPES)]
for _scene in QUICK_SCENES:
    assert _scene.colour != _scene.background
#: sampler settings of every check (DDIM, the preset's own scheduler)
STEPS, GUIDANCE = 20, 5.0
HELD_OUT_SEED = 1_000_003  # train_shapes.py holds out the images of seed + this number


def _psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    diff = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    mse = float(diff[where].mean() if where is not None else diff.mean())
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _latents(pipe: Any, n: int, seed: int, size: int) -> np.ndarray:
    f = pipe.vae_scale_factor
    return np.random.default_rng(seed).standard_normal((n, pipe.latent_channels, size // f, size // f),
                                                       dtype=np.float32)


def generate(pipe: Any, scenes: list[Scene], seed: int = 0, steps: int = STEPS, guidance: float = GUIDANCE,
             size: int = shapes_data.IMAGE_SIZE) -> np.ndarray:
    """float32 [N, size, size, 3] in [0, 1]: one image per scene, seeded initial noise per image."""
    out = []
    for i, scene in enumerate(scenes):
        result = pipe(scene.caption, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                      latents=_latents(pipe, 1, seed + i, size), output_type="np")
        out.append(result.images[0])
    return np.stack(out)


def prompt_following(images: np.ndarray, scenes: list[Scene]) -> dict[str, Any]:
    detections = [shapes_data.detect(im) for im in images]
    rows = [{"prompt": s.caption, "found": f"{d.colour} {d.shape} on {d.background}", "match": d.matches(s)}
            for s, d in zip(scenes, detections)]
    parts = {"colour": sum(d.colour == s.colour for s, d in zip(scenes, detections)),
             "shape": sum(d.shape == s.shape for s, d in zip(scenes, detections)),
             "background": sum(d.background == s.background for s, d in zip(scenes, detections))}
    n = len(scenes)
    return {"images": n, "rate": sum(r["match"] for r in rows) / n,
            **{f"{k}_rate": v / n for k, v in parts.items()}, "rows": rows}


def held_out(n: int, seed: int = 0) -> tuple[np.ndarray, list[Scene]]:
    """Images the training never saw (train_shapes.py draws its held-out set from the same seed)."""
    return shapes_data.make_dataset(n, seed=seed + HELD_OUT_SEED)


def img2img_layout(pipe: Any, n: int = 8, strength: float = 0.3, seed: int = 0) -> dict[str, Any]:
    images, scenes = held_out(n, seed)
    kept, psnrs = 0, []
    for i, (image, scene) in enumerate(zip(images, scenes)):
        out = pipe(scene.caption, image=image, strength=strength, num_inference_steps=STEPS,
                   guidance_scale=GUIDANCE, seed=seed + i, output_type="np").images[0]
        kept += shapes_data.detect(out).matches(scene)
        psnrs.append(_psnr(out, image / 255.0))
    return {"images": n, "strength": strength, "scene_kept_rate": kept / n, "psnr_db_mean": float(np.mean(psnrs)),
            "psnr_db_min": float(np.min(psnrs))}


def inpaint_keep(pipe: Any, n: int = 8, seed: int = 0) -> dict[str, Any]:
    """Mask the right half; the left half (unmasked) must come back (PSNR there), via the VAE."""
    images, scenes = held_out(n, seed)
    size = images.shape[1]
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2:] = 255
    keep = np.zeros((size, size, 3), bool)
    keep[:, : size // 2 - 2] = True  # a 2-pixel margin: the mask is blended at latent resolution
    kept, changed = [], []
    for i, (image, scene) in enumerate(zip(images, scenes)):
        out = pipe(scene.caption, image=image, mask_image=mask, strength=1.0, num_inference_steps=STEPS,
                   guidance_scale=GUIDANCE, seed=seed + i, output_type="np").images[0]
        kept.append(_psnr(out, image / 255.0, keep))
        changed.append(_psnr(out, image / 255.0, ~keep))
    return {"images": n, "mask": "right half", "unmasked_psnr_db_mean": float(np.mean(kept)),
            "unmasked_psnr_db_min": float(np.min(kept)), "masked_psnr_db_mean": float(np.mean(changed))}


def vae_reconstruction(pipe: Any, n: int = 32, seed: int = 0) -> dict[str, Any]:
    """sdrt's VAE encoder (posterior mean: strength-free) then decoder on held-out images."""
    images, _ = held_out(n, seed)
    pixels = images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
    encoder, f, c = pipe.engine("vae_encoder"), pipe.vae_scale_factor, pipe.latent_channels
    recon = []
    for i in range(n):
        encoder.prepare({"B": 1, "h": pixels.shape[2] // f, "w": pixels.shape[3] // f})
        mean = encoder.run({"sample": pixels[i : i + 1]})["latent_parameters"][:, :c]
        recon.append(pipe.decode(pipe.scaling_factor * (mean - pipe.shift_factor))[0])
    psnrs = [_psnr(r, im / 255.0) for r, im in zip(recon, images)]
    return {"images": n, "psnr_db_mean": float(np.mean(psnrs)), "psnr_db_min": float(np.min(psnrs))}


def evaluate(pipe: Any, scenes: list[Scene] | None = None, seeds: int = 1) -> dict[str, Any]:
    scenes = scenes or QUICK_SCENES
    all_scenes = [s for _ in range(seeds) for s in scenes]
    images = np.concatenate([generate(pipe, scenes, seed=1000 * k) for k in range(seeds)])
    return {"settings": {"steps": STEPS, "guidance_scale": GUIDANCE, "scheduler": "the preset's (DDIM)",
                         "backend": pipe.backend_name},
            "prompt_following": prompt_following(images, all_scenes),
            "img2img": img2img_layout(pipe), "inpaint": inpaint_keep(pipe), "vae": vae_reconstruction(pipe)}


def write_grid(pipe: Any, path: str) -> None:
    """The quick prompts' images (seed 0), labelled "ok" where the detector agrees with the caption, else "MISS"."""
    from sdrt.demo_picture import compose

    images = generate(pipe, QUICK_SCENES)
    panels = []
    for scene, image in zip(QUICK_SCENES, images):
        found = shapes_data.detect(image)
        mark = "ok" if found.matches(scene) else "MISS"
        panels.append((f"{scene.colour} {scene.shape} / {scene.background}: {mark}", image))
    compose(path, f"sdrt ({pipe.backend_name}) on the shapes preset: \"a COLOUR SHAPE on a BACKGROUND "
                  f"background\", {STEPS} DDIM steps, guidance {GUIDANCE}, seed 0", panels, tile=160, columns=5)


def main(argv: list[str] | None = None) -> int:
    from sdrt.runtime import Pipeline

    p = argparse.ArgumentParser(prog="python -m sdrt.bench.shapes_quality", description=__doc__.split("\n")[0])
    p.add_argument("model", help="ONNX folder exported from the shapes preset")
    p.add_argument("--all", action="store_true", help="all 60 captions instead of the 15 quick ones")
    p.add_argument("--seeds", type=int, default=1, help="initial-noise seeds per caption")
    p.add_argument("--backend", default="ort-cpu")
    p.add_argument("--grid", metavar="PNG", help="also write the quick prompts' images as one picture")
    args = p.parse_args(argv)
    pipe = Pipeline.load(args.model, backend=args.backend)
    report = evaluate(pipe, shapes_data.all_scenes() if args.all else None, seeds=args.seeds)
    if args.grid:
        write_grid(pipe, args.grid)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
