"""Which latent sizes the exported UNet really supports: probed, not assumed.

A UNet halves the latent `n` times on the way down and doubles it on the way up; a graph that
baked in the trace's plain 2x upsampling only works at multiples of 2**n. The exporter traces
the size-forwarding branch (see `graphs.UNetGraph.export_context`), which should work at every
size; this module runs the exported graph against PyTorch at every latent size from 1 to 2**n + 1
(as non-square pairs) and at the powers of two, and derives the rule from what passed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from sdrt import spec
from sdrt.errors import SdrtError
from sdrt.export.check import THRESHOLDS, Case, judge, ort_session, torch_case
from sdrt.export.graphs import wrap

#: A practical cap, not a graph limit: 256 latents = 2048 px at f = 8 (memory grows with h*w).
MAX_LATENT_CAP = 256


def probe_pairs(num_upsamplers: int) -> list[tuple[int, int]]:
    """(h, w) pairs covering every size 1..2**n+1 on both axes, plus square powers of two, plus a few
    pairs with both sides above 2**n (what the rule falls back to when PyTorch itself refuses the
    small squares, e.g. a one-upsampler UNet at 2x2)."""
    n = 2**num_upsamplers + 2
    pairs = [(k, n - k) for k in range(1, n)]
    pairs += [(2**i, 2**i) for i in range(num_upsamplers + 1)] + [(2**num_upsamplers, 2 ** (num_upsamplers + 1))]
    big = 2**num_upsamplers + 1
    pairs += [(big, big), (big, big + 1), (big + 1, big)]
    return list(dict.fromkeys(pairs))


def architectural_multiple(unet: Any) -> int:
    """2**(number of upsamplers): what a plain trace supports; the rule when the UNet is not exported."""
    return 2 ** int(unet.num_upsamplers)


def probe_cases(unet: Any, model_values: Mapping[str, int], *, precision: str, vocab_size: int,
                model: spec.ModelSpec) -> dict[tuple[int, int], Case | None]:
    """The PyTorch side of the probe (batch 1): None where PyTorch itself refuses the size."""
    unet_spec = model.denoiser
    reference = wrap(unet_spec, unet, model)
    cases: dict[tuple[int, int], Case | None] = {}
    for i, (h, w) in enumerate(probe_pairs(int(unet.num_upsamplers))):
        try:
            cases[(h, w)] = torch_case(unet_spec, reference, {**model_values, "B": 1, "h": h, "w": w, "L": spec.TOKEN_LENGTH},
                                       precision=precision, vocab_size=vocab_size, seed=2000 + i)
        except ValueError:  # GroupNorm over one value per group
            cases[(h, w)] = None
    return cases


def probe(unet: Any, path: Path, model_values: Mapping[str, int], *, precision: str, vocab_size: int,
          sample_size: int, model: spec.ModelSpec) -> dict[str, Any]:
    """Run the exported UNet at the probe sizes (batch 1) and derive the manifest's `sizes`."""
    cases = probe_cases(unet, model_values, precision=precision, vocab_size=vocab_size, model=model)
    return probe_rule(cases, path, int(unet.num_upsamplers), precision=precision, sample_size=sample_size,
                      model=model)


def probe_rule(cases: dict[tuple[int, int], Case | None], path: Path, num_upsamplers: int, *, precision: str,
               sample_size: int, model: spec.ModelSpec) -> dict[str, Any]:
    """The ONNX Runtime side of the probe: which sizes pass, and the rule they admit."""
    n = num_upsamplers
    session = ort_session(path)
    threshold = THRESHOLDS[precision]
    unet_spec = model.denoiser
    passed = {pair: case is not None and judge(unet_spec, session, case)["max_rel_error"] <= threshold
              for pair, case in cases.items()}
    del session
    found = admitted(passed, n)
    if found is None:
        raise SdrtError(f"unet export check failed: the graph is wrong at every probed latent size "
                        f"({', '.join(f'{h}x{w}' for h, w in passed)}): nothing was written")
    multiple, min_latent = found
    max_latent = max(MAX_LATENT_CAP, 4 * sample_size) // multiple * multiple
    failing = [f"{h}x{w}" for (h, w), ok in passed.items() if not ok]
    rule = (f"latent height and width: any multiple of {multiple} from {min_latent} to {max_latent} "
            f"(image = vae_scale_factor x latent). Probed against PyTorch at batch 1, latent sizes "
            f"{', '.join(f'{h}x{w}' for h, w in passed)}: "
            + (f"failed at {', '.join(failing)} (wrong output, or PyTorch itself refuses the size)" if failing
               else "all within the check threshold")
            + f"; the UNet halves the latent {n} times and its graph forwards the skip sizes to the "
              f"upsamplers, so odd sizes round like diffusers. The upper bound is a practical cap "
              f"(memory), not a graph limit.")
    return {"latent_multiple": multiple, "min_latent": min_latent, "max_latent": max_latent, "rule": rule,
            "probed": [{"h": h, "w": w, "passed": ok} for (h, w), ok in passed.items()]}


def admitted(passed: dict[tuple[int, int], bool], num_upsamplers: int) -> tuple[int, int] | None:
    """(multiple, min_latent): the smallest multiple, then the smallest minimum, such that every
    probed pair of that multiple with both sides >= the minimum passed, and at least one of those
    pairs has a side that is not also a multiple of the next power of two (evidence for this
    multiple, not only for a coarser one)."""
    top = 2**num_upsamplers
    for multiple in (2**i for i in range(num_upsamplers + 1)):
        for low in range(multiple, top + 2, multiple):
            judged = {(h, w): ok for (h, w), ok in passed.items() if h % multiple == 0 and w % multiple == 0
                      and min(h, w) >= low}
            finer = multiple == top or any(h % (2 * multiple) or w % (2 * multiple) for h, w in judged)
            if judged and finer and all(judged.values()):
                return multiple, low
    return None


def unprobed(unet: Any, sample_size: int) -> dict[str, Any]:
    """The rule when the UNet was not exported (--components without unet): the architecture's."""
    multiple = architectural_multiple(unet)
    max_latent = max(MAX_LATENT_CAP, 4 * sample_size) // multiple * multiple
    return {"latent_multiple": multiple, "min_latent": multiple, "max_latent": max_latent,
            "rule": f"unet not exported, sizes not probed: multiples of 2**{unet.num_upsamplers} = {multiple} "
                    f"(the UNet's plain upsampling), up to a practical cap of {max_latent}",
            "probed": []}


class UNetSizes:
    """The UNet's size rule for export (the functions above, for one UNet): its trace size, the rule
    without a probe, and the probe. Keeps numbers only, never the module (export frees it)."""

    def __init__(self, unet: Any, sample_size: int):
        self.num_upsamplers = int(unet.num_upsamplers)
        self.multiple = architectural_multiple(unet)
        self.sample_size = sample_size

    def trace_latent(self) -> tuple[int, int]:
        """Non-square at the model's latent size (every check shape differs from it)."""
        m = self.multiple
        h = max(self.sample_size // m, 2) * m
        return h, max(h * 3 // 4 // m, 1) * m

    def unprobed(self) -> dict[str, Any]:
        max_latent = max(MAX_LATENT_CAP, 4 * self.sample_size) // self.multiple * self.multiple
        return {"latent_multiple": self.multiple, "min_latent": self.multiple, "max_latent": max_latent,
                "rule": f"unet not exported, sizes not probed: multiples of 2**{self.num_upsamplers} = "
                        f"{self.multiple} (the UNet's plain upsampling), up to a practical cap of {max_latent}",
                "probed": []}

    def probe_cases(self, unet: Any, model_values: Mapping[str, int], *, precision: str, vocab_size: int,
                    model: spec.ModelSpec) -> dict[tuple[int, int], Case | None]:
        return probe_cases(unet, model_values, precision=precision, vocab_size=vocab_size, model=model)

    def probe_rule(self, cases: dict[tuple[int, int], Case | None], path: Path, *, precision: str,
                   model: spec.ModelSpec) -> dict[str, Any]:
        return probe_rule(cases, path, self.num_upsamplers, precision=precision, sample_size=self.sample_size,
                          model=model)
