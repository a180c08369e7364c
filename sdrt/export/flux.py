"""What exporting a Flux.1 pipeline needs beyond the UNet families: its facts and its size rule.

Flux's transformer takes the latents as tokens: each 2x2 patch of latent pixels (4C values) is one
token, so an image is any size whose latent is even on both sides (multiples of 2·f = 16 px at
f = 8), and an h x w latent is ``h/2*w/2`` tokens (the spec's shape term). Its rotary
position ids make every token grid valid; the size probe runs the exported graph against PyTorch on
grids of both parities, square and not, to show it (the rule comes from what passed, as for the UNet).

The facts check that the components fit together (T5's width is the transformer's
``joint_attention_dim``, CLIP's the ``pooled_projection_dim``, the transformer's output is the VAE's
4C) and record what the runtime needs: the guidance variant, the latent geometry, the T5 context
diffusers allows (``max_sequence_length`` <= 512), FluxPipeline's default size (128 latent pixels).
"""

from __future__ import annotations

from typing import Any, Mapping

from sdrt import spec
from sdrt.errors import SdrtError
from sdrt.export import sizes
from sdrt.export.check import THRESHOLDS, Case, CheckFailed, judge, ort_session, torch_case
from sdrt.export.facts_sd3 import vae_sample_size
from sdrt.export.graphs import wrap

#: FluxPipeline.default_sample_size: the default image is 128 latent pixels (1024 px at f = 8)
DEFAULT_SAMPLE_SIZE = 128
#: the longest T5 context diffusers' Flux pipelines take (check_inputs refuses more)
MAX_SEQUENCE_LENGTH = 512
#: token grids (h, w) the size probe runs: 1 token, odd and even sides, non-square both ways, and larger
PROBE_GRIDS = ((1, 1), (1, 2), (2, 1), (3, 5), (4, 4), (5, 2), (7, 9), (16, 12))


def pipeline_facts(src: Any) -> dict[str, Any]:
    """What the runtime needs to know about a Flux model, read from its configs (never assumed)."""
    transformer, vae = src.config("transformer"), src.config("vae")
    clip, t5 = src.config("text_encoder"), src.config("text_encoder_2")
    channels = int(vae.latent_channels)
    packed = 4 * channels
    out_channels = int(transformer.get("out_channels") or transformer.in_channels)
    if int(transformer.get("patch_size", 1)) != 1:
        raise SdrtError(f"the transformer's patch_size is {transformer.patch_size}: FluxPipeline packs 2x2 latent "
                        f"patches itself and needs patch_size 1")
    if out_channels != packed:
        raise SdrtError(f"the transformer predicts {out_channels} channels but the VAE's {channels} latent channels "
                        f"pack into {packed}: the pipeline's components do not match")
    if int(transformer.joint_attention_dim) != int(t5.d_model):
        raise SdrtError(f"the transformer's joint_attention_dim {transformer.joint_attention_dim} differs from "
                        f"text_encoder_2's d_model {t5.d_model}: the pipeline's components do not match")
    if int(transformer.pooled_projection_dim) != int(clip.hidden_size):
        raise SdrtError(f"the transformer's pooled_projection_dim {transformer.pooled_projection_dim} differs from "
                        f"text_encoder's hidden_size {clip.hidden_size}: the pipeline's components do not match")
    in_channels = int(transformer.in_channels)
    variants = ["guidance"] if transformer.get("guidance_embeds", False) else []
    tokenizer_2 = src.tokenizers.get("tokenizer_2")
    limit = int(getattr(tokenizer_2, "model_max_length", MAX_SEQUENCE_LENGTH) or MAX_SEQUENCE_LENGTH)
    return {
        "family": "flux",
        "variants": variants,
        "dims": {"P": int(transformer.pooled_projection_dim)},
        "class_name": src.class_name,
        "prediction_type": "flow_prediction",
        "scaling_factor": float(vae.scaling_factor),
        "shift_factor": float(vae.get("shift_factor") or 0.0),
        "vae_scale_factor": 2 ** (len(vae.block_out_channels) - 1),
        "latent_channels": channels,
        "unet_in_channels": in_channels,
        "text_hidden_size": int(transformer.joint_attention_dim),
        "token_length": spec.TOKEN_LENGTH,
        "max_sequence_length": min(MAX_SEQUENCE_LENGTH, limit),
        "sample_size": DEFAULT_SAMPLE_SIZE,
        "vae_sample_size": vae_sample_size(vae),
        "inpainting": in_channels != packed,
        "force_upcast": bool(vae.get("force_upcast", False)),
        "vae_decoder_input": "latents divided by scaling_factor, plus shift_factor (FluxPipeline does both "
                             "before vae.decode)",
        "vae_encoder_output": "raw diagonal-Gaussian parameters (mean, logvar) on channels; subtract "
                              "shift_factor from the sampled latents, then multiply by scaling_factor",
    }




class FluxSizes:
    """The transformer's size rule: the probe (PyTorch side, then ONNX Runtime's) and its result."""

    #: latent pixels per token side: latent sizes are multiples of it
    multiple = 2

    def __init__(self, config: Any, sample_size: int):
        self.sample_size = sample_size
        self.max_latent = max(sizes.MAX_LATENT_CAP, 4 * sample_size) // self.multiple * self.multiple

    def trace_latent(self) -> tuple[int, int]:
        """The latent size the transformer is traced at (non-square: every check shape differs)."""
        return 16, 12

    def unprobed(self) -> dict[str, Any]:
        return {"latent_multiple": self.multiple, "min_latent": self.multiple, "max_latent": self.max_latent,
                "rule": f"transformer not exported, sizes not probed: latent sizes that are multiples of "
                        f"{self.multiple} (Flux packs 2x2 latent patches into one token), up to a practical cap of "
                        f"{self.max_latent}", "probed": []}

    def probe_cases(self, transformer: Any, model_values: Mapping[str, int], *, precision: str, vocab_size: int,
                    model: spec.ModelSpec) -> dict[tuple[int, int], Case | None]:
        reference = wrap(model.denoiser, transformer, model)
        m = self.multiple  # the spec's dims are latent pixels: a token grid h x w is latent (m*h) x (m*w)
        return {(h, w): torch_case(model.denoiser, reference, {**model_values, "B": 1, "h": m * h, "w": m * w,
                                                               "L": spec.TOKEN_LENGTH},
                                   precision=precision, vocab_size=vocab_size, seed=2000 + i)
                for i, (h, w) in enumerate(PROBE_GRIDS)}

    def probe_rule(self, cases: dict[tuple[int, int], Case | None], path: Any, *, precision: str,
                   model: spec.ModelSpec, lean: bool = False) -> dict[str, Any]:
        """The ONNX Runtime side (`lean`: a streamed graph's 16-bit weights kept so, check.ort_session)."""
        session = ort_session(path, lean=lean)
        threshold = THRESHOLDS[precision]
        passed = {grid: judge(model.denoiser, session, case)["max_rel_error"] <= threshold
                  for grid, case in cases.items() if case is not None}
        del session
        failing = [f"{h}x{w}" for (h, w), ok in passed.items() if not ok]
        if failing:
            raise CheckFailed(f"transformer export check failed: the graph is wrong at token grids "
                              f"{', '.join(failing)} (batch 1): nothing was written",
                              measured=f"wrong at token grids {', '.join(failing)}")
        m = self.multiple
        grids = ", ".join(f"{h}x{w}" for h, w in passed)
        rule = (f"latent height and width: any multiple of {m} from {m} to {self.max_latent} (image = "
                f"vae_scale_factor x latent; Flux packs {m}x{m} latent patches into one token). Probed against "
                f"PyTorch at batch 1, token grids {grids} (latent = {m} x tokens): all within the check threshold; "
                f"the rotary position ids make every grid valid. The upper bound is a practical cap (memory), "
                f"not a graph limit.")
        return {"latent_multiple": m, "min_latent": m, "max_latent": self.max_latent, "rule": rule,
                "probed": [{"h": h * m, "w": w * m, "passed": ok} for (h, w), ok in passed.items()]}
