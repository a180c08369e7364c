"""Which latent sizes an exported patch transformer (SD3's MMDiT) supports: probed, not assumed.

A patch transformer cuts the latent into p x p patches (p = patch_size), so its sizes are multiples
of p; its position embedding is cropped from a pos_embed_max_size x pos_embed_max_size grid of
patches, which bounds the size. The probe runs the exported graph against PyTorch (batch 1) at
non-square multiples of p, from the smallest up to the bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from sdrt import spec
from sdrt.errors import SdrtError
from sdrt.export.check import THRESHOLDS, Case, judge, ort_session, torch_case, within
from sdrt.export.graphs import wrap

#: the same practical cap as the UNet's (memory grows with (h w)^2 in attention), in latents
MAX_LATENT_CAP = 256


def is_transformer(config: Any) -> bool:
    """Whether a denoiser's config is a patch transformer's (not a UNet's)."""
    return "patch_size" in config and "up_block_types" not in config


def bounds(config: Any, sample_size: int) -> tuple[int, int, int]:
    """(multiple, min_latent, max_latent) the architecture (its config) admits."""
    p = int(config.patch_size)
    grid = config.get("pos_embed_max_size")
    cap = max(MAX_LATENT_CAP, 4 * sample_size) // p * p
    return p, p, min(cap, int(grid) * p) if grid else cap


def probe_pairs(multiple: int, max_latent: int) -> list[tuple[int, int]]:
    p = multiple
    pairs = [(p, p), (p, 3 * p), (3 * p, 2 * p), (5 * p, 7 * p), (max_latent, p)]
    return list(dict.fromkeys((h, w) for h, w in pairs if max(h, w) <= max_latent))


def probe_cases(module: Any, model_values: Mapping[str, int], *, precision: str, vocab_size: int,
                model: spec.ModelSpec, sample_size: int) -> dict[tuple[int, int], Case | None]:
    """The PyTorch side (batch 1, a short text): None where PyTorch itself refuses the size."""
    denoiser = model.denoiser
    reference = wrap(denoiser, module, model)
    multiple, _, max_latent = bounds(module.config, sample_size)
    cases: dict[tuple[int, int], Case | None] = {}
    for i, (h, w) in enumerate(probe_pairs(multiple, max_latent)):
        try:
            cases[(h, w)] = torch_case(denoiser, reference, {**model_values, "B": 1, "h": h, "w": w, "L": 8},
                                       precision=precision, vocab_size=vocab_size, seed=2000 + i)
        except (ValueError, RuntimeError):  # not a multiple of the patch: the patch embedding refuses it
            cases[(h, w)] = None
    return cases


def probe_rule(cases: dict[tuple[int, int], Case | None], path: Path, module_bounds: tuple[int, int, int], *,
               precision: str, model: spec.ModelSpec, lean: bool = False) -> dict[str, Any]:
    """The ONNX Runtime side: every multiple of the patch size must pass; the manifest's `sizes`
    (`lean`: a streamed graph's 16-bit weights kept so, check.ort_session)."""
    multiple, min_latent, max_latent = module_bounds
    session = ort_session(path, lean=lean)
    threshold = THRESHOLDS[precision]
    passed = {pair: case is not None and within(judge(model.denoiser, session, case), threshold)
              for pair, case in cases.items()}
    del session
    wrong = [f"{h}x{w}" for (h, w), ok in passed.items() if not ok and h % multiple == 0 and w % multiple == 0]
    if wrong:
        raise SdrtError(f"{model.denoiser.name} export check failed: the graph is wrong at latent sizes "
                        f"{', '.join(wrong)} against PyTorch: nothing was written")
    refused = [f"{h}x{w}" for (h, w), ok in passed.items() if not ok]
    rule = (f"latent height and width: any multiple of {multiple} (the patch size) from {min_latent} to "
            f"{max_latent} (image = vae_scale_factor x latent). Probed against PyTorch at batch 1, latent sizes "
            f"{', '.join(f'{h}x{w}' for h, w in passed)}: the multiples all within the check threshold"
            + (f"; {', '.join(refused)} refused (not a multiple of the patch size)" if refused else "")
            + f". The upper bound is the position-embedding grid or a practical cap (memory).")
    return {"latent_multiple": multiple, "min_latent": min_latent, "max_latent": max_latent, "rule": rule,
            "probed": [{"h": h, "w": w, "passed": ok} for (h, w), ok in passed.items()]}


def unprobed(config: Any, sample_size: int) -> dict[str, Any]:
    """The rule when the transformer was not exported (--components without it): the architecture's."""
    multiple, min_latent, max_latent = bounds(config, sample_size)
    return {"latent_multiple": multiple, "min_latent": min_latent, "max_latent": max_latent,
            "rule": f"transformer not exported, sizes not probed: multiples of the patch size {multiple}, "
                    f"up to {max_latent}", "probed": []}


class TransformerSizes:
    """A patch transformer's size rule for export (the functions above, for one transformer): its trace
    size, the rule without a probe, and the probe. Keeps numbers only, never the module."""

    def __init__(self, config: Any, sample_size: int):
        self.bounds = bounds(config, sample_size)
        self.sample_size = sample_size
        self._unprobed = unprobed(config, sample_size)

    def trace_latent(self) -> tuple[int, int]:
        m = self.bounds[0]
        h = max(self.sample_size // m, 2) * m
        return h, max(h * 3 // 4 // m, 1) * m

    def unprobed(self) -> dict[str, Any]:
        return self._unprobed

    def probe_cases(self, module: Any, model_values: Mapping[str, int], *, precision: str, vocab_size: int,
                    model: spec.ModelSpec) -> dict[tuple[int, int], Case | None]:
        return probe_cases(module, model_values, precision=precision, vocab_size=vocab_size, model=model,
                           sample_size=self.sample_size)

    def probe_rule(self, cases: dict[tuple[int, int], Case | None], path: Path, *, precision: str,
                   model: spec.ModelSpec, lean: bool = False) -> dict[str, Any]:
        return probe_rule(cases, path, self.bounds, precision=precision, model=model, lean=lean)
