"""Train `shapes-controlnet`: a ControlNet for the trained `shapes` model, mask of the shape -> the shape lands there.

    python -m sdrt.export.train_shapes_controlnet --out sdrt/data/shapes-controlnet \
        --steps 6000 --batch 64 --lr 5e-4 --max-minutes 34                 # the shipped weights (training.json)
    python -m sdrt.export.train_shapes_controlnet --out /tmp/c --steps 20  # a smoke run

The control image is the shape's coverage mask (white on black, 32 px), the target the shapes data
set's image of that scene. The ControlNet starts as diffusers' `ControlNetModel.from_unet` of the
shipped UNet (its zero convolutions at zero, as ControlNet training does); the base (text encoder,
UNet, VAE) stays frozen. Epsilon prediction under SD's schedule on cached VAE latents, AdamW, an
exponential moving average of the weights (what ships), one seed for everything. Writes a diffusers
ControlNet folder (config.json + fp16 safetensors: what `sdrt export` takes), `training.json` and
`loss.csv` as it goes, `loss.png` at the end. Export-side code: torch and diffusers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sdrt import atomic
from sdrt.export import shapes_data
from sdrt.export.shapes_model import SHAPES_SCHEDULER
from sdrt.export.train_shapes import Ema, caption_ids, encode_latents, lr_at, to_tensor, write_json

#: the control image's downscale must equal the shapes VAE's (4): 3 conditioning-embedding blocks
CONDITIONING_CHANNELS = (16, 32, 64)
WEIGHTS = "diffusion_pytorch_model.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sdrt.export.train_shapes_controlnet",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder to write the ControlNet into")
    p.add_argument("--images", type=int, default=12000, help="training images (default 12000)")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    p.add_argument("--batch", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on the shared 2-core machine 2 threads ran 4x slower)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and keep the checkpoint) after this long")
    p.add_argument("--checkpoint-every", type=int, default=250)
    return p.parse_args(argv)


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """n images (uint8), their control masks (float [n, 32, 32]) and caption indices, from `seed`."""
    rng = np.random.default_rng(seed)
    scenes = [shapes_data.random_scene(rng) for _ in range(n)]
    rendered = [shapes_data.render_with_coverage(s, rng) for s in scenes]
    index = {scene: i for i, scene in enumerate(shapes_data.all_scenes())}
    return (np.stack([r[0] for r in rendered]), np.stack([r[1] for r in rendered]),
            [index[s] for s in scenes])


def control_tensor(masks: np.ndarray) -> Any:
    """Coverage masks [n, H, W] -> control images [n, 3, H, W] in [0, 1] (white shape on black)."""
    import torch

    return torch.from_numpy(np.repeat(masks[:, None], 3, axis=1).astype(np.float32))


def save_controlnet(model: Any, out: Path, report: dict[str, Any]) -> None:
    """A diffusers ControlNet folder: config.json and fp16 safetensors (written whole or not at all)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").half().contiguous() for k, v in model.state_dict().items()}
    with atomic.replacing(out / WEIGHTS) as tmp:
        save_file(state, str(tmp))
        os.chmod(tmp, 0o644)
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    config = {"_class_name": type(model).__name__, **config}
    atomic.write_text(out / "config.json", json.dumps(config, indent=2, default=list) + "\n")
    write_json(out / "training.json", report)


def main(argv: list[str] | None = None) -> int:
    import diffusers
    import torch

    from sdrt.export.presets import build_components

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    parts = build_components("shapes")
    unet, vae, text_encoder = parts["unet"].eval(), parts["vae"].eval(), parts["text_encoder"].eval()
    controlnet = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS)
    controlnet.train()
    images, masks, labels = make_data(args.images, args.seed)
    started = time.perf_counter()
    latents = encode_latents(vae, to_tensor(images)) * float(vae.config.scaling_factor)
    controls = control_tensor(masks)
    with torch.no_grad():
        contexts = text_encoder(caption_ids(parts["tokenizer"]))[0]
    labels_t = torch.tensor(labels)
    scheduler = diffusers.DDPMScheduler(**{k: v for k, v in SHAPES_SCHEDULER.items() if k != "set_alpha_to_one"})
    opt = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=0.0)
    ema = Ema(controlnet, decay=0.995)
    log_path = out / "loss.csv"
    log_lines = ["step,loss"]
    report: dict[str, Any] = {"command": "python -m sdrt.export.train_shapes_controlnet " + " ".join(
                                  sys.argv[1:] if argv is None else argv), "settings": vars(args), "data_seconds": round(time.perf_counter() - started, 1),
                              "torch": torch.__version__, "diffusers": diffusers.__version__}
    phase_start = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, warmup=100)
        idx = torch.randint(0, len(latents), (args.batch,), generator=generator)
        z0, control, context = latents[idx], controls[idx], contexts[labels_t[idx]]
        noise = torch.randn(z0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=generator)
        noisy = scheduler.add_noise(z0, noise, t)
        down, mid = controlnet(noisy, t, context, control, return_dict=False)
        pred = unet(noisy, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        opt.step()
        ema.update(controlnet, step)
        done = step + 1
        if step % 10 == 0 or done == args.steps:
            log_lines.append(f"{step},{loss.item():.6f}")
            print(f"step {step} loss {loss.item():.4f} ({time.perf_counter() - phase_start:.0f} s)", flush=True)
        out_of_time = args.max_minutes is not None and time.perf_counter() - phase_start > 60 * args.max_minutes
        if done % args.checkpoint_every == 0 or done == args.steps or out_of_time:
            recent = [float(line.split(",")[1]) for line in log_lines[1:]][-10:]
            report.update(steps_done=done, seconds=round(time.perf_counter() - phase_start, 1),
                          last_loss=float(np.mean(recent)))
            atomic.write_text(log_path, "\n".join(log_lines) + "\n")
            save_controlnet(ema.model, out, report)
        if out_of_time:
            break
    plot(log_path, out / "loss.png")
    print(f"wrote {out} ({report['steps_done']} steps in {report['seconds']} s)", file=sys.stderr)
    return 0


def plot(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [line.split(",") for line in log_path.read_text().splitlines()[1:]]
    steps, losses = [int(r[0]) for r in rows], [float(r[1]) for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, losses, lw=0.8)
    if len(losses) > 10:
        ax.plot(steps[9:], np.convolve(losses, np.ones(10) / 10, mode="valid"), lw=1.6)
    ax.set_yscale("log")
    ax.set_title("shapes ControlNet (epsilon MSE)")
    ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
