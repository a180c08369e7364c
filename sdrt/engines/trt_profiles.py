"""TensorRT optimization profiles derived from the component spec.

A profile is a range of the dynamic symbols (``B``, ``h``, ``w``): ``min``/``opt``/``max`` dicts. It
is static by default (min = opt = max: the requested batch and size), dynamic on request
(``--min-size/--max-size/--max-batch``, ``opt`` at the requested size). Tensor shapes come from
`sdrt.spec`, never spelled here: pass the model's own ComponentSpec (``manifest.spec.component(name)``)
so a family's extra inputs (SDXL's ``text_embeds`` / ``time_ids``, LCM's ``timestep_cond``) get their
profile, and its batch hint (rows per image, with and without guidance). Sizes are checked against
the model's size rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from sdrt import spec
from sdrt.errors import SdrtError
from sdrt.manifest import SizeRule

Dims = dict[str, int]


def batch_factors(component: spec.ComponentSpec, guidance: bool) -> tuple[int, int]:
    """(smallest, largest) batch per image of a component (the spec's `batch` hint): under classifier-free
    guidance the UNet runs both halves together (2x); a smallest factor of 0 means "from a batch of 1"
    (the text encoder sees one row per prompt, the VAE encoder one per init image)."""
    return component.batch_per_image(guidance)


@dataclass(frozen=True)
class ProfileRequest:
    """What a user asks `sdrt build` for, in images and pixels."""

    batch: int = 1                 # images per call (opt)
    height: int | None = None      # pixels (opt); None: the model's default size
    width: int | None = None
    min_size: int | None = None    # pixels, both sides; dynamic profile when set
    max_size: int | None = None
    max_batch: int | None = None   # images; dynamic batch when set
    guidance: bool = True          # classifier-free guidance doubles the UNet batch
    tokens: int = spec.TOKEN_LENGTH  # text tokens the denoiser attends to (L; 77 = one CLIP chunk)
    max_tokens: int | None = None  # the most text tokens (long prompts: 77 per chunk); dynamic L when set

    @property
    def dynamic(self) -> bool:
        return (self.min_size is not None or self.max_size is not None or self.max_batch is not None
                or self.max_tokens is not None)


@dataclass(frozen=True)
class DimRange:
    """min / opt / max of the dynamic symbols one component uses."""

    min: Dims
    opt: Dims
    max: Dims

    def to_json(self) -> dict[str, Dims]:
        return {"min": dict(self.min), "opt": dict(self.opt), "max": dict(self.max)}

    @classmethod
    def from_json(cls, data: Mapping[str, Mapping[str, int]]) -> "DimRange":
        return cls(*(dict((k, int(v)) for k, v in data[key].items()) for key in ("min", "opt", "max")))

    @property
    def static(self) -> bool:
        return self.min == self.max

    def covers(self, dims: Mapping[str, int]) -> bool:
        return all(self.min[s] <= int(dims[s]) <= self.max[s] for s in self.min)


def used_symbols(component: spec.ComponentSpec) -> tuple[str, ...]:
    """The dynamic symbols a component's tensors use (text encoder: only B)."""
    return spec.used_symbols(component)


def _positive(label: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value <= 0):
        raise SdrtError(f"{label} {value!r} must be a positive whole number")


def image_range(request: ProfileRequest, rule: SizeRule, default_size: int) -> tuple[tuple[int, int], ...]:
    """((min_h, min_w), (opt_h, opt_w), (max_h, max_w)) in pixels, checked against the size rule."""
    height = request.height or default_size
    width = request.width or default_size
    rule.check_image_size(height, width)
    if request.min_size is None and request.max_size is None:
        return (height, width), (height, width), (height, width)
    lo = request.min_size if request.min_size is not None else min(height, width)
    hi = request.max_size if request.max_size is not None else max(height, width)
    rule.check_image_size(lo, hi)
    if lo > hi:
        raise SdrtError(f"--min-size {lo} is larger than --max-size {hi}")
    if not (lo <= min(height, width) and max(height, width) <= hi):
        raise SdrtError(f"the requested size {height}x{width} is outside --min-size {lo} .. --max-size {hi}: "
                        f"widen the range or pick a size inside it")
    return (lo, lo), (height, width), (hi, hi)


def batch_range(request: ProfileRequest) -> tuple[int, int, int]:
    """(min, opt, max) images per call."""
    _positive("batch", request.batch)
    _positive("--max-batch", request.max_batch)
    if request.max_batch is None:
        return request.batch, request.batch, request.batch
    if request.batch > request.max_batch:
        raise SdrtError(f"batch {request.batch} is larger than --max-batch {request.max_batch}")
    return 1, request.batch, request.max_batch


def token_range(request: ProfileRequest) -> tuple[int, int, int]:
    """(min, opt, max) text tokens the denoiser attends to: `tokens` alone, or one chunk .. `max_tokens`."""
    _positive("tokens", request.tokens)
    if request.max_tokens is None:
        return request.tokens, request.tokens, request.tokens
    _positive("--max-tokens", request.max_tokens)
    if request.max_tokens < request.tokens:
        raise SdrtError(f"--max-tokens {request.max_tokens} is below the {request.tokens} tokens of one prompt chunk: "
                        f"pass a multiple of {spec.TOKEN_LENGTH} (231 = three chunks, 225 prompt tokens)")
    return min(request.tokens, spec.TOKEN_LENGTH), request.tokens, request.max_tokens


def default_size(request: ProfileRequest, manifest) -> int:
    """The model's default image side, asked for only when the request leaves a side out (a ControlNet
    folder has none: its build needs --height and --width)."""
    if request.height is not None and request.width is not None:
        return max(request.height, request.width)
    return manifest.default_image_size


def dim_range(component: spec.ComponentSpec, request: ProfileRequest, rule: SizeRule,
              default_size: int) -> DimRange:
    """The profile of one component for a build request."""
    (h0, w0), (h1, w1), (h2, w2) = image_range(request, rule, default_size)
    n0, n1, n2 = batch_range(request)
    t0, t1, t2 = token_range(request)
    lo_factor, hi_factor = batch_factors(component, request.guidance)
    f = rule.vae_scale_factor
    full = {
        "min": {"B": max(1, lo_factor * n0), "h": h0 // f, "w": w0 // f, "L": t0},
        "opt": {"B": hi_factor * n1, "h": h1 // f, "w": w1 // f, "L": t1},
        "max": {"B": hi_factor * n2, "h": h2 // f, "w": w2 // f, "L": t2},
    }
    keep = used_symbols(component)
    return DimRange(*({s: full[k][s] for s in keep} for k in ("min", "opt", "max")))


def input_shapes(component: spec.ComponentSpec, model_values: Mapping[str, int],
                 rng: DimRange) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shape of every input tensor: what the builder's profile gets."""
    comp = component
    per_key = [spec.shapes(component, {**model_values, **dims}) for dims in (rng.min, rng.opt, rng.max)]
    return {name: (per_key[0][name], per_key[1][name], per_key[2][name]) for name in comp.input_names}


def max_shapes(component: spec.ComponentSpec, model_values: Mapping[str, int], rng: DimRange,
               include_optional: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape at the profile's max: what its device buffer is sized for."""
    return spec.shapes(component, {**model_values, **rng.max}, include_optional=include_optional)


def describe(component: spec.ComponentSpec, rng: DimRange, vae_scale_factor: int, guidance: bool = True) -> str:
    """A range in the user's units: 'batch 1 image(s), 512x512 px' or '... 256x256 .. 768x768 px'."""
    _, per_image = batch_factors(component, guidance)
    parts = []
    b0, b1 = rng.min["B"], rng.max["B"]
    parts.append(f"batch {b0}" + (f"..{b1}" if b1 != b0 else "") + f" ({component.name} batch; {per_image}x per image)")
    if "h" in rng.min:
        f = vae_scale_factor
        lo = f"{rng.min['h'] * f}x{rng.min['w'] * f}"
        hi = f"{rng.max['h'] * f}x{rng.max['w'] * f}"
        parts.append(f"{lo} px" if lo == hi else f"{lo} .. {hi} px")
    return ", ".join(parts)


def request_for(component: spec.ComponentSpec, dims: Mapping[str, int], vae_scale_factor: int,
                guidance: bool = True) -> ProfileRequest:
    """The smallest static build request whose profile covers these engine dims."""
    _, per_image = batch_factors(component, guidance)
    images = max(1, -(-int(dims["B"]) // per_image))
    f = vae_scale_factor
    height = int(dims["h"]) * f if "h" in dims else None
    width = int(dims["w"]) * f if "w" in dims else None
    tokens = int(dims.get("L", spec.TOKEN_LENGTH))
    return ProfileRequest(batch=images, height=height, width=width, guidance=guidance, tokens=tokens)


def build_command(folder: str, backend: str, request: ProfileRequest, components: tuple[str, ...] = (),
                  force: bool = False) -> str:
    """The `sdrt build` command line that makes an engine for this request."""
    words = ["sdrt build", f"--model {folder}", f"--backend {backend}"]
    if request.height:
        words.append(f"--height {request.height}")
    if request.width:
        words.append(f"--width {request.width}")
    words.append(f"--batch {request.batch}")
    for flag, value in (("--min-size", request.min_size), ("--max-size", request.max_size),
                        ("--max-batch", request.max_batch)):
        if value is not None:
            words.append(f"{flag} {value}")
    most_tokens = max(request.tokens, request.max_tokens or 0)
    if most_tokens != spec.TOKEN_LENGTH:
        words.append(f"--max-tokens {most_tokens}")
    if not request.guidance:
        words.append("--no-guidance")
    if components:
        words.append("--components " + " ".join(components))
    if force:
        words.append("--force")
    return " ".join(words)
