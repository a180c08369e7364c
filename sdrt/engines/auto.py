"""Which CPU backend `auto` picks, at each precision: a table of measurements, keyed by CPU features.

Not a guess and not a measurement at every load (compiling the SD 1.5 UNet on two backends to time
one step would cost more than it saves): each row records what was measured on a CPU of that kind,
sd15 UNet, latent 32x32, batch 2 (one CFG step), median; the backend with the shorter step goes first.
A CPU matching no row keeps the default order (ONNX Runtime first at f32: it needs no extra install).
Another backend goes first only when its measured step is shorter by more than ``SWITCH_MARGIN``:
ort-cpu is the lean install (openvino is an extra), and a one-call benchmark's spread is ~5%, so a
smaller gap does not pay for that. (LoRA switching no longer favours ort-cpu: openvino's side paths
switch in ~0.2 s on sd15, ort-cpu in ~4-6 s; README, LoRA.)

Only OpenVINO runs at bf16/f16, so those orders are trivially [openvino].
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    cpu: str                       # the CPU the numbers come from
    needs: frozenset[str]          # /proc/cpuinfo flags a CPU must have to match the row
    lacks: frozenset[str]          # flags it must not have
    unet_step_s: dict[str, float]  # "backend precision" -> sd15 UNet step (s), batch 2, latent 32x32
    source: str                    # where the measurement is written down


TABLE: tuple[Measured, ...] = (
    Measured("Intel Xeon (2 cores, AMX-BF16, AVX512-BF16)", frozenset({"amx_bf16"}), frozenset(),
             {"ort-cpu f32": 1.64, "openvino f32": 1.79, "openvino bf16": 0.58,
              # the sd15 int8 UNet of `sdrt quantize` (openvino: int8 layers, f32 elsewhere as auto runs it), one run
              "ort-cpu int8": 2.087, "openvino int8": 1.422},
             "issue 10 (measured by the session that filed it); int8: "
             "benchmarks/results/unet-profile-sd15-int8-2026-12-07 (run 2, a shared machine)"),
    Measured("AMD EPYC Zen 4 (2 cores, AVX512-BF16, no AMX)", frozenset({"avx512_bf16", "sse4a"}),
             frozenset({"amx_bf16"}),
             {"ort-cpu f32": 2.038, "openvino f32": 1.907, "openvino bf16": 1.003},
             "benchmarks/results/cpu-sd15-2026-12-02/result.json (sd15 256x256, per-step median of 11 UNet calls; "
             "ort-cpu with the bench's `fast` tuning)"),
)
DEFAULT_F32 = ("ort-cpu", "openvino")
SWITCH_MARGIN = 0.10  # another backend first only when its step is > 10% shorter than the default's


def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def matching_row(flags: frozenset[str] | None = None) -> Measured | None:
    flags = cpu_flags() if flags is None else flags
    for row in TABLE:
        if row.needs <= flags and not (row.lacks & flags):
            return row
    return None


def cpu_order(precision: str | None = None, flags: frozenset[str] | None = None) -> list[str]:
    """CPU backends, fastest first at ``precision`` (None or "f32": the exported precision; "int8": a
    folder `sdrt quantize` wrote, both backends run it)."""
    if precision not in (None, "f32", "int8"):
        return ["openvino"]
    row = matching_row(flags)
    if row is None:
        return list(DEFAULT_F32)
    suffix = " int8" if precision == "int8" else " f32"
    timed = {k.split()[0]: v for k, v in row.unet_step_s.items() if k.endswith(suffix) and v > 0}
    if len(timed) < len(DEFAULT_F32):
        return list(DEFAULT_F32)
    order = sorted(DEFAULT_F32, key=lambda name: timed[name])
    default = DEFAULT_F32[0]
    if order[0] != default and timed[order[0]] > timed[default] * (1.0 - SWITCH_MARGIN):
        return list(DEFAULT_F32)  # faster, but by less than the margin
    return order
