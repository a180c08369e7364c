"""How well the trained `shapes-controlnet` puts the shape where its control mask says, through sdrt's runtime.

    python -m sdrt.bench.shapes_controlnet_iou --model SHAPES_ONNX --controlnet SHAPES_CN_ONNX \\
        --out benchmarks/results/shapes-controlnet-iou-DATE [--cases 16] [--grid grid.png]

A fixed set of cases (scene + a mask of its shape at a random size and place, from one seed that the
training never drew from; seeded initial noise per case), each generated twice with the same prompt and
noise: by the shapes model alone, and with the ControlNet given the mask (white shape on black, what it
was trained on). The measure is the IoU of the detected blob (`sdrt.export.shapes_data.blob_mask`: the
largest region that is not the background colour) with the mask (coverage >= 0.5). Also counted: whether
the detector still finds the caption's colour, shape and background (the ControlNet must not cost the
prompt). Torch-free: both runs go through `Pipeline.load(..., controlnet=...)` on an sdrt backend.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sdrt.export import shapes_data
from sdrt.export.shapes_data import Scene

#: the cases' seed (masks and scenes); train_shapes_controlnet.py draws its data from seed 0
CASE_SEED = 20261207
#: sampler settings (the shapes quality checks'): the preset's DDIM, 20 steps, guidance 5
STEPS, GUIDANCE = 20, 5.0


def cases(n: int = 16, seed: int = CASE_SEED) -> list[tuple[Scene, np.ndarray]]:
    """n (scene, coverage [32, 32] float in [0, 1]) pairs: the scene's shape at a random size and place."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = shapes_data.random_scene(rng)
        out.append((scene, shapes_data.render_with_coverage(scene, rng)[1]))
    return out


def control_image(coverage: np.ndarray) -> np.ndarray:
    """The ControlNet's input for a mask: uint8 [H, W, 3], the shape white on black."""
    return np.repeat(np.round(coverage * 255).astype(np.uint8)[..., None], 3, axis=-1)


def iou(image: np.ndarray, coverage: np.ndarray) -> float:
    """IoU of the image's detected blob with the mask (coverage >= 0.5)."""
    blob, mask = shapes_data.blob_mask(image), coverage >= 0.5
    union = int((blob | mask).sum())
    return float((blob & mask).sum()) / union if union else 0.0


def _generate(pipe: Any, scene: Scene, seed: int, **control: Any) -> np.ndarray:
    size = shapes_data.IMAGE_SIZE
    f = pipe.vae_scale_factor
    latents = np.random.default_rng(seed).standard_normal((1, pipe.latent_channels, size // f, size // f),
                                                           dtype=np.float32)
    return pipe(scene.caption, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=size, width=size,
                latents=latents, output_type="np", **control).images[0]


def measure(base: Any, controlled: Any, n: int = 16, scale: float = 1.0) -> dict[str, Any]:
    """Per-case and mean IoU without (`base`: a Pipeline) and with the ControlNet (`controlled`: the same
    model loaded with it), and the images (float [n, 2, 32, 32, 3]: without, with)."""
    rows, images = [], []
    for i, (scene, coverage) in enumerate(cases(n)):
        plain = _generate(base, scene, seed=i)
        steered = _generate(controlled, scene, seed=i, control_image=control_image(coverage),
                            controlnet_conditioning_scale=scale)
        images.append(np.stack([plain, steered]))
        rows.append({"prompt": scene.caption, "mask_pixels": int((coverage >= 0.5).sum()),
                     "iou_without": round(iou(plain, coverage), 4), "iou_with": round(iou(steered, coverage), 4),
                     "scene_found_without": shapes_data.detect(plain).matches(scene),
                     "scene_found_with": shapes_data.detect(steered).matches(scene)})
    without = np.array([r["iou_without"] for r in rows])
    with_cn = np.array([r["iou_with"] for r in rows])
    summary = {"cases": n, "iou_mean_without": round(float(without.mean()), 4),
               "iou_mean_with": round(float(with_cn.mean()), 4),
               "iou_median_without": round(float(np.median(without)), 4),
               "iou_median_with": round(float(np.median(with_cn)), 4),
               "cases_with_higher_iou": int((with_cn > without).sum()),
               "cases_iou_over_0.5_without": int((without > 0.5).sum()),
               "cases_iou_over_0.5_with": int((with_cn > 0.5).sum()),
               "scene_found_without": sum(r["scene_found_without"] for r in rows),
               "scene_found_with": sum(r["scene_found_with"] for r in rows)}
    return {"settings": {"steps": STEPS, "guidance_scale": GUIDANCE, "controlnet_conditioning_scale": scale,
                         "scheduler": "the preset's (DDIM)", "backend": base.backend_name, "case_seed": CASE_SEED},
            "summary": summary, "rows": rows, "images": np.stack(images)}


def markdown(result: dict[str, Any], machine: dict[str, Any]) -> str:
    s, st = result["summary"], result["settings"]
    lines = [f"# shapes-controlnet: IoU of the detected blob with the control mask ({s['cases']} cases)", "",
             f"sdrt {st['backend']}, {st['steps']} DDIM steps, guidance {st['guidance_scale']}, ControlNet scale "
             f"{st['controlnet_conditioning_scale']}, same prompt and initial noise with and without; CPU "
             f"{machine['cpu_model']} ({', '.join(machine['cpu_features'])}).", "",
             "| | without ControlNet | with shapes-controlnet |", "|---|---|---|",
             f"| mean IoU | {s['iou_mean_without']:.3f} | **{s['iou_mean_with']:.3f}** |",
             f"| median IoU | {s['iou_median_without']:.3f} | {s['iou_median_with']:.3f} |",
             f"| cases with IoU > 0.5 | {s['cases_iou_over_0.5_without']} / {s['cases']} | "
             f"{s['cases_iou_over_0.5_with']} / {s['cases']} |",
             f"| detector finds the caption's colour, shape, background | {s['scene_found_without']} / {s['cases']} | "
             f"{s['scene_found_with']} / {s['cases']} |", "",
             f"The ControlNet raised the IoU in {s['cases_with_higher_iou']} of {s['cases']} cases.", "",
             "| prompt | mask px | IoU without | IoU with | scene found without / with |", "|---|---|---|---|---|"]
    lines += [f"| {r['prompt']} | {r['mask_pixels']} | {r['iou_without']:.3f} | {r['iou_with']:.3f} | "
              f"{'yes' if r['scene_found_without'] else 'no'} / {'yes' if r['scene_found_with'] else 'no'} |"
              for r in result["rows"]]
    return "\n".join(lines) + "\n"


def write_grid(result: dict[str, Any], path: str | Path, n: int) -> None:
    """mask | without | with, per case, labelled with the IoUs."""
    from sdrt.demo_picture import compose

    panels = []
    for (scene, coverage), row, pair in zip(cases(n), result["rows"], result["images"]):
        panels += [(f"{scene.colour} {scene.shape} / {scene.background}", control_image(coverage) / 255.0),
                   (f"without: IoU {row['iou_without']:.2f}", pair[0]), (f"with: IoU {row['iou_with']:.2f}", pair[1])]
    compose(path, "shapes-controlnet: the control mask, the shapes model alone, the same with the ControlNet",
            panels, tile=128, columns=6)


def main(argv: list[str] | None = None) -> int:
    from sdrt.bench import environment
    from sdrt.bench.provenance import write_result
    from sdrt.runtime import Pipeline

    p = argparse.ArgumentParser(prog="python -m sdrt.bench.shapes_controlnet_iou", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="ONNX folder exported from the shapes preset")
    p.add_argument("--controlnet", required=True, help="ONNX folder exported from the shapes-controlnet preset")
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--scale", type=float, default=1.0, help="controlnet_conditioning_scale (default 1.0)")
    p.add_argument("--backend", default="ort-cpu")
    p.add_argument("--out", help="results folder (result.json, result.md, grid.png, RUN.md); default: print only")
    args = p.parse_args(argv)
    base = Pipeline.load(args.model, backend=args.backend)
    controlled = Pipeline.load(args.model, backend=args.backend, controlnet=args.controlnet)
    result = measure(base, controlled, args.cases, args.scale)
    machine = environment.describe_machine()
    text = markdown(result, machine)
    print(text)
    if args.out:
        record = {k: v for k, v in result.items() if k != "images"}
        record["machine"] = machine
        write_result(Path(args.out), record, text)
        write_grid(result, Path(args.out) / "grid.png", args.cases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
