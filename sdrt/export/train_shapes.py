"""Train the `shapes` preset from scratch on the synthetic data set (CPU, under an hour).

    python -m sdrt.export.train_shapes --out sdrt/data/shapes            # the shipped weights
    python -m sdrt.export.train_shapes --out /tmp/s --vae-steps 50 --unet-steps 50   # a smoke run

Two phases, one seed (the data, the initial weights, the noise and the caption drop-out all
draw from it, so a rerun with the same versions and thread count gives the same weights):

1. the VAE (AutoencoderKL, 32 px -> 8x8x4): MSE reconstruction + a small KL term; then its
   latent scaling factor is measured (1 / std of the training set's latents, as SD's 0.18215 was);
2. the UNet and the text encoder together, on the cached latents of the training images:
   epsilon prediction under SD's noise schedule, 10 % empty captions (so classifier-free guidance
   works), an exponential moving average of the weights (what ships).

Every `--checkpoint-every` steps the current weights are written to --out as fp16 safetensors
(a partial run still leaves a usable preset), with `training.json` (settings, steps done, time,
losses) and `loss.csv`; at the end `loss.png`. Training code is export-side: torch and diffusers.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sdrt import atomic
from sdrt.export import shapes_data
from sdrt.export.shapes_model import SCALING_KEY, SHAPES_SCHEDULER, SHAPES_TEXT, SHAPES_UNET, SHAPES_VAE, WEIGHT_FILES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sdrt.export.train_shapes", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for the weights, training.json, loss.csv, loss.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=6000, help="training images (default 6000)")
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--unet-steps", type=int, default=3000)
    p.add_argument("--unet-batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="UNet + text encoder learning rate")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine 2 threads ran 8x slower)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop the UNet phase after this long")
    p.add_argument("--stop-at-step", type=int, default=None,
                   help="stop the UNet phase after this many steps (the learning-rate schedule still plans "
                        "--unet-steps): replays a run that --max-minutes cut short")
    p.add_argument("--resume", metavar="DIR", help="start from a previous --out's weights: its VAE is kept "
                                                    "(no VAE phase), the UNet and text encoder train on")
    return p.parse_args(argv)


class Log:
    """loss.csv lines (phase, step, loss, elapsed seconds), flushed as they come."""

    def __init__(self, out: Path):
        self.path = out / "loss.csv"
        self.file = self.path.open("w")
        self.file.write("phase,step,loss,seconds\n")
        self.start = time.perf_counter()
        self.rows: list[tuple[str, int, float]] = []

    def __call__(self, phase: str, step: int, loss: float) -> None:
        self.rows.append((phase, step, loss))
        self.file.write(f"{phase},{step},{loss:.6f},{time.perf_counter() - self.start:.1f}\n")
        self.file.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def to_tensor(images: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def save_fp16(model: Any, path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").half().contiguous() for k, v in model.state_dict().items()
             if not k.endswith("position_ids")}
    with atomic.replacing(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
        os.chmod(tmp, 0o644)  # package data: readable by all, whatever the umask of who trained it


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic.write_text(path, json.dumps(data, indent=2) + "\n")


def train_vae(vae: Any, images: Any, args: argparse.Namespace, log: Log, generator: Any) -> None:
    import torch

    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    vae.train()
    for step in range(args.vae_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.vae_steps, 1e-3)
        idx = torch.randint(0, len(images), (args.vae_batch,), generator=generator)
        x = images[idx]
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=generator)
        recon = vae.decode(z).sample
        kl = posterior.kl().mean() / z[0].numel()
        loss = torch.nn.functional.mse_loss(recon, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == args.vae_steps - 1:
            log("vae", step, loss.item())
    vae.eval()


def encode_latents(vae: Any, images: Any) -> Any:
    """Posterior means of every training image (the UNet phase trains on these, cached)."""
    import torch

    with torch.no_grad():
        return torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])


def vae_psnr(vae: Any, images: Any) -> float:
    """Mean PSNR (dB, 8-bit scale) of the VAE's reconstructions (posterior mean) of `images`."""
    import torch

    with torch.no_grad():
        recon = vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((recon - images) / 2).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())


def caption_ids(tokenizer: Any) -> Any:
    """Token ids [61, 77]: the 60 captions in all_scenes() order, then the empty prompt."""
    import torch

    texts = [scene.caption for scene in shapes_data.all_scenes()] + [""]
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return ids.to(torch.long)


class Ema:
    """Exponential moving average of a model's parameters (warm-up: decay grows with the step)."""

    def __init__(self, model: Any, decay: float = 0.999):
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.model.parameters():
            p.requires_grad_(False)

    def update(self, model: Any, step: int) -> None:
        import torch

        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, p in zip(self.model.parameters(), model.parameters()):
                ema.mul_(decay).add_(p.detach(), alpha=1 - decay)


def checkpoint(out: Path, ema_text: Ema, ema_unet: Ema, vae: Any, report: dict[str, Any]) -> None:
    save_fp16(ema_text.model, out / WEIGHT_FILES["text_encoder"])
    save_fp16(ema_unet.model, out / WEIGHT_FILES["unet"])
    save_fp16(vae, out / WEIGHT_FILES["vae"], {SCALING_KEY: repr(report["vae"]["scaling_factor"])})
    write_json(out / "training.json", report)


def train_unet(parts: dict[str, Any], latents: Any, labels: Any, args: argparse.Namespace, log: Log,
               generator: Any, out: Path, report: dict[str, Any]) -> None:
    import diffusers
    import torch

    unet, text_encoder, ids = parts["unet"], parts["text_encoder"], parts["ids"]
    scheduler = diffusers.DDPMScheduler(**{k: v for k, v in SHAPES_SCHEDULER.items() if k != "set_alpha_to_one"})
    empty = len(ids) - 1
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)  # no decay: unused vocabulary rows stay put
    ema_unet, ema_text = Ema(unet), Ema(text_encoder)
    unet.train()
    text_encoder.train()
    phase_start = time.perf_counter()
    done = 0
    for step in range(args.unet_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.unet_steps, args.lr, warmup=200)
        idx = torch.randint(0, len(latents), (args.unet_batch,), generator=generator)
        z0 = latents[idx]
        which = labels[idx].clone()
        which[torch.rand(len(idx), generator=generator) < 0.1] = empty
        noise = torch.randn(z0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=generator)
        noisy = scheduler.add_noise(z0, noise, t)
        context = text_encoder(ids[which])[0]
        loss = torch.nn.functional.mse_loss(unet(noisy, t, encoder_hidden_states=context).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet, step)
        ema_text.update(text_encoder, step)
        done = step + 1
        if step % 20 == 0 or done == args.unet_steps:
            log("unet", step, loss.item())
        out_of_time = (args.max_minutes is not None and time.perf_counter() - phase_start > 60 * args.max_minutes
                       or args.stop_at_step is not None and done >= args.stop_at_step)
        if done % args.checkpoint_every == 0 or done == args.unet_steps or out_of_time:
            report["unet"].update(steps_done=done, seconds=round(time.perf_counter() - phase_start, 1),
                                  last_loss=float(np.mean([r[2] for r in log.rows if r[0] == "unet"][-10:])))
            checkpoint(out, ema_text, ema_unet, parts["vae"], report)
        if out_of_time:
            break


def load_weights(folder: Path, models: dict[str, Any]) -> None:
    """A previous run's fp16 weights, into fp32 models (for --resume)."""
    from safetensors.torch import load_file

    for name, model in models.items():
        state = {k: v.float() for k, v in load_file(str(folder / WEIGHT_FILES[name])).items()}
        model.load_state_dict(state, strict=False)


def plot_loss(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [line.split(",") for line in log_path.read_text().splitlines()[1:]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, phase, title in ((axes[0], "vae", "VAE (MSE + 1e-4 KL)"), (axes[1], "unet", "UNet (epsilon MSE)")):
        pts = [(int(r[1]), float(r[2])) for r in rows if r[0] == phase]
        if pts:
            steps, losses = zip(*pts)
            ax.plot(steps, losses, lw=0.8)
            if len(losses) > 10:  # a running mean over 10 logged points
                smooth = np.convolve(losses, np.ones(10) / 10, mode="valid")
                ax.plot(steps[9:], smooth, lw=1.6)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].set_ylabel("training loss")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdrt.export.tokenizer_files import build_clip_tokenizer

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out)
    generator = torch.Generator().manual_seed(args.seed)

    images_np, scenes = shapes_data.make_dataset(args.images, seed=args.seed)
    held_out_np, _ = shapes_data.make_dataset(256, seed=args.seed + 1_000_003)
    images, held_out = to_tensor(images_np), to_tensor(held_out_np)
    scene_index = {s: i for i, s in enumerate(shapes_data.all_scenes())}
    labels = torch.tensor([scene_index[s] for s in scenes], dtype=torch.long)

    vae = diffusers.AutoencoderKL(**copy.deepcopy(SHAPES_VAE))
    unet = diffusers.UNet2DConditionModel(**copy.deepcopy(SHAPES_UNET))
    text_encoder = CLIPTextModel(CLIPTextConfig(**copy.deepcopy(SHAPES_TEXT)))
    report: dict[str, Any] = {
        "command": "python -m sdrt.export.train_shapes " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "parameters": {"vae": sum(p.numel() for p in vae.parameters()),
                       "unet": sum(p.numel() for p in unet.parameters()),
                       "text_encoder": sum(p.numel() for p in text_encoder.parameters())},
        "vae": {}, "unet": {},
    }
    started = time.perf_counter()
    if args.resume:
        previous = json.loads((Path(args.resume) / "training.json").read_text())
        load_weights(Path(args.resume), {"vae": vae, "unet": unet, "text_encoder": text_encoder})
        report["resumed_from"] = previous
        report["vae"] = dict(previous["vae"])
        latents = encode_latents(vae, images)
        scaling = float(previous["vae"]["scaling_factor"])
    else:
        train_vae(vae, images, args, log, generator)
        latents = encode_latents(vae, images)
        scaling = 1.0 / float(latents.std())
        report["vae"] = {"steps": args.vae_steps, "seconds": round(time.perf_counter() - started, 1),
                         "scaling_factor": scaling, "held_out_psnr_db": round(vae_psnr(vae, held_out), 2),
                         "held_out_images": len(held_out)}
    print(f"VAE: {report['vae']}", flush=True)
    for p in vae.parameters():
        p.requires_grad_(False)
    parts = {"unet": unet, "text_encoder": text_encoder, "vae": vae, "ids": caption_ids(build_clip_tokenizer())}
    train_unet(parts, latents * scaling, labels, args, log, generator, out, report)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["load_average_end"] = os.getloadavg()
    write_json(out / "training.json", report)
    plot_loss(log.path, out / "loss.png")
    print(f"done in {report['total_seconds']:.0f} s: {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
