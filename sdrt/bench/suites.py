"""The benchmark suites: what each one runs, as a table. `sdrt bench --suite NAME` reads a row;
command-line flags override single fields (`--steps 2`, `--reps 1`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sdrt.errors import SdrtError


@dataclass(frozen=True)
class Suite:
    name: str
    model: str  # preset name, diffusers folder or ONNX model folder
    height: int | None  # None: the model's default size
    width: int | None
    steps: int
    batches: tuple[int, ...]  # images per prompt; one benchmark per batch
    backends: tuple[str, ...]  # sdrt backends measured against the reference
    reference_device: str  # "cpu" | "cuda"
    reference_precision: str  # "fp32" | "fp16"
    warmup: int
    reps: int
    needs_gpu: bool
    scheduler: str | None = None  # None: the model's own scheduler config
    guidance_scale: float = 7.5
    soak_generations: int = 0  # > 0: a soak run (sdrt only, RSS sampled per generation)
    #: other runtimes on the same weights: "diffusers:bf16" (autocast), "openvino-genai:f32|bf16"
    peers: tuple[str, ...] = ()
    about: str = ""
    dry_run: bool = False  # only checks the machinery: its report goes to benchmarks/dryruns/ by default
    #: optional components every contender leaves out (SD3's T5: diffusers' text_encoder_3=None)
    without: tuple[str, ...] = ()


SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("cpu-quick", "tiny", None, None, steps=4, batches=(1,), backends=("ort-cpu",),
          reference_device="cpu", reference_precision="fp32", warmup=1, reps=5, needs_gpu=False,
          about="tiny preset on the CPU: seconds; checks the machinery end to end", dry_run=True),
    Suite("cpu-sd15", "sd15", 256, 256, steps=10, batches=(1,),
          backends=("ort-cpu", "openvino", "openvino:bf16", "ort-cpu@int8", "openvino@int8", "openvino:bf16@int8"),
          reference_device="cpu", reference_precision="fp32", warmup=1, reps=3, needs_gpu=False,
          peers=("openvino-genai:f32", "openvino-genai:bf16", "openvino-genai:bf16@int8", "diffusers:bf16"),
          about="the real SD 1.5 architecture at 256x256: what a 2-core CPU can afford; sdrt ort-cpu and "
                "openvino f32/bf16, and the int8 UNet (sdrt quantize) on both, against diffusers fp32/bf16 and "
                "OpenVINO GenAI f32/bf16 and on the same int8 UNet"),
    Suite("cpu-sdxl", "sdxl", 512, 512, steps=4, batches=(1,), backends=("ort-cpu",),
          reference_device="cpu", reference_precision="fp32", warmup=1, reps=1, needs_gpu=False,
          scheduler="EulerDiscreteScheduler", guidance_scale=5.0, peers=("diffusers:bf16",),
          about="the real SDXL 1.0 base architecture at 512x512, 4 Euler steps with guidance 5 (UNet batch 2): "
                "sdrt ort-cpu against diffusers fp32 and bf16 autocast, one contender in memory at a time "
                "(each an estimated 14-17 GB); openvino is left out by default (it needs more memory than "
                "ort-cpu: an estimated 22 GB for SDXL), add it with --backend openvino"),
    Suite("cpu-tiny-flux", "tiny-flux", 256, 256, steps=4, batches=(1,), backends=("ort-cpu", "openvino", "openvino:bf16"),
          reference_device="cpu", reference_precision="fp32", warmup=1, reps=5, needs_gpu=False, guidance_scale=3.5,
          peers=("diffusers:bf16",),
          about="the tiny Flux.1-dev-style preset at 256x256, 4 steps, embedded guidance 3.5: sdrt ort-cpu and "
                "openvino f32/bf16 against diffusers fp32 and bf16 autocast, the same packed latents"),
    Suite("cpu-sd3", "sd3.5-medium", 512, 512, steps=4, batches=(1,), backends=("ort-cpu", "openvino:bf16"),
          reference_device="cpu", reference_precision="fp32", warmup=0, reps=1, needs_gpu=False, guidance_scale=7.0,
          peers=("diffusers:bf16",), without=("text_encoder_3",),
          about="the SD3.5 Medium architecture at 512x512, 4 steps, CFG 7 (transformer batch 2), without T5 for "
                "every contender (diffusers fp32 with T5-XXL needs 31 GB): sdrt ort-cpu and openvino bf16 against "
                "diffusers fp32 and bf16 autocast, one contender in memory at a time; --onnx DIR of an export of "
                "`sdrt preset sd3.5-medium` (a preset by name cannot stream its T5)"),
    Suite("gpu-sd15", "sd15", 512, 512, steps=50, batches=(1, 4), backends=("ort-cuda", "ort-cuda:cuda_graph"),
          reference_device="cuda", reference_precision="fp16", warmup=2, reps=5, needs_gpu=True,
          about="SD 1.5 at 512x512, 50 steps: ort-cuda without and with CUDA graph, against diffusers fp16"),
    Suite("gpu-sd21", "sd21", 768, 768, steps=50, batches=(1, 4), backends=("ort-cuda",),
          reference_device="cuda", reference_precision="fp16", warmup=2, reps=5, needs_gpu=True,
          about="SD 2.1 (v-prediction) at 768x768, 50 steps: ort-cuda against diffusers fp16"),
    Suite("soak", "tiny", None, None, steps=4, batches=(1,), backends=("ort-cpu",),
          reference_device="cpu", reference_precision="fp32", warmup=5, reps=0, needs_gpu=False,
          soak_generations=1000,
          about="1,000 generations on tiny in one process; RSS must stay flat (slope in KB/generation)"),
)}


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise SdrtError(f"unknown benchmark suite {name!r}; choose one of: {', '.join(SUITES)}") from None


def custom_suite(model: str, *, gpu: bool) -> Suite:
    """A suite for `--model` without `--suite`: cpu-quick's protocol (or gpu-sd15's) on that model."""
    from sdrt.bench.output import is_dry_run

    base = SUITES["gpu-sd15" if gpu else "cpu-quick"]
    return replace(base, name="custom", model=model, height=None, width=None, about=f"custom run on {model}",
                   dry_run=is_dry_run(model))


def with_overrides(suite: Suite, **fields: object) -> Suite:
    """The suite with the command line's explicit values (None means: keep the suite's)."""
    given = {k: v for k, v in fields.items() if v is not None}
    return replace(suite, **given)


def require_gpu(suite: Suite) -> None:
    """One line, before anything heavy, when a GPU suite is asked for on a machine without one."""
    from sdrt.bench.environment import gpu_names

    if suite.needs_gpu and not gpu_names():
        raise SdrtError(f"suite {suite.name} needs an NVIDIA GPU and none is visible here "
                        f"(nvidia-smi finds none): run it on a GPU machine, or use --suite cpu-sd15")
