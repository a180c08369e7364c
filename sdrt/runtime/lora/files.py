"""Read LoRA files the way people download them: kohya / AUTOMATIC1111 and diffusers / PEFT safetensors.

Torch-free: safetensors' numpy API. A file becomes a list of `LoraLayer`s — one low-rank pair per
targeted layer, with the component it targets (text_encoder, text_encoder_2, unet), the layer's
name as the file spells it (kohya's underscored ``down_blocks_0_attentions_0_..._to_q`` or the
dotted diffusers name) and its alpha. Which model parameter a name means is decided later, against
the weight map (sdrt.runtime.lora.merge), because kohya's underscores are only unambiguous there.

Formats:

- kohya / A1111: ``lora_unet_<layer>.lora_down.weight``, ``.lora_up.weight``, ``.alpha`` (scalar);
  ``lora_te_`` (SD 1.x/2.x text encoder), ``lora_te1_`` / ``lora_te2_`` (SDXL's two). Conv LoRA:
  ``lora_down`` [r, in, kh, kw] with ``lora_up`` [out, r, 1, 1].
- diffusers / PEFT: ``unet.<layer>.lora_A.weight`` / ``lora_B.weight`` (and ``text_encoder.``,
  ``text_encoder_2.``); what diffusers' training scripts save (``convert_state_dict_to_diffusers``):
  ``.lora.down.weight`` / ``.lora.up.weight`` on the UNet, ``.lora_linear_layer.down.weight`` /
  ``.up.weight`` on the text encoders; and the attention-processor files of diffusers < 0.21
  (``attn1.processor.to_q_lora.down.weight``, ``to_out_lora``; ``self_attn.to_q_lora`` in text
  encoders), renamed to the module they patch. An optional ``<layer>.alpha``; without one,
  alpha = rank (diffusers' default).
- SD3 / SD3.5 (the family table's prefixes): ``transformer.`` (diffusers/PEFT) or ``base_model.model.``
  (PEFT's own), ``lora_transformer_`` (OneTrainer: diffusers names, underscored), ``lycoris_``
  (SimpleTuner), and kohya's ``lora_unet_`` / ComfyUI's ``diffusion_model.`` with the original MMDiT
  names (sdrt.runtime.lora.names_mmdit); ``lora_te1_`` / ``lora_te2_`` / ``lora_te3_`` for CLIP-L,
  CLIP-G and T5.

Other adapter kinds are refused in one line naming the kind: they are not low-rank products.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from sdrt.errors import SdrtError
from sdrt.hashing import file_sha256
from sdrt.spec import lora_prefixes

#: key prefix -> the component it targets: kohya's (lora_unet_, lora_te_, lora_te1_, ...) and diffusers'
#: (unet., text_encoder., ...), as the family table (sdrt.spec.families) declares them; a model reads
#: its files with its own family's table (`read_lora(path, family.lora_prefixes)`)
PREFIXES = lora_prefixes()
#: (up suffix, down suffix) of each low-rank spelling
PAIRS = ((".lora_up.weight", ".lora_down.weight"), (".lora_B.weight", ".lora_A.weight"),
         (".lora.up.weight", ".lora.down.weight"), (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
         ("_lora.up.weight", "_lora.down.weight"))
#: diffusers' attention-processor LoRA (``<attn>.processor.to_q_lora``) -> the module it patches,
#: in the UNet and in a text encoder (whose attention names its projections q_proj ... out_proj)
PROCESSOR_TARGETS = {"unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
                     "text": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}}
#: a pattern in a key -> the adapter kind it belongs to (refused)
OTHER_KINDS = ((r"\.hada_w[12]_[ab]", "LoHa"), (r"\.lokr_w[12]", "LoKr"), (r"\.dora_scale$", "DoRA"),
               (r"lora_magnitude_vector", "DoRA"), (r"\.lora_mid\.", "LoCon with a Tucker core (lora_mid)"),
               (r"\.oft_(blocks|diag)", "OFT"), (r"\.on_input$", "IA3"), (r"\.[ab][12]\.weight$", "GLoRA"),
               (r"\.diff(_b)?$", "full weight difference (diff)"), (r"lora_embedding_[AB]", "embedding LoRA"),
               (r"\.lora_[AB]\.bias$", "LoRA with biases"))

@dataclass(frozen=True)
class LoraLayer:
    component: str
    layer: str          # as the file names it, prefix and suffix removed
    up: np.ndarray      # [out, r] or [out, r, 1, 1]
    down: np.ndarray    # [r, in] or [r, in, kh, kw]
    alpha: float
    key: str            # the file's key of `down` (named in errors)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def ratio(self) -> float:
        """alpha / rank: the factor kohya and diffusers put in front of up @ down."""
        return self.alpha / self.rank


@dataclass(frozen=True)
class LoraFile:
    path: Path
    name: str           # file name without .safetensors (A1111's <lora:NAME:scale>)
    format: str         # "kohya" or "diffusers"
    layers: tuple[LoraLayer, ...]
    short_hash: str     # A1111's "Lora hashes": sha256 of the tensors after the header, first 12 hex


def _split(key: str, prefixes: Mapping[str, str]) -> tuple[str, str, str] | None:
    """key -> (component, layer, suffix) or None when the prefix is unknown."""
    for prefix, component in prefixes.items():
        if key.startswith(prefix):
            rest = key[len(prefix):]
            for up, down in PAIRS:
                for suffix in (up, down):
                    if rest.endswith(suffix):
                        layer = rest[: -len(suffix)]
                        if suffix.startswith("_lora."):  # processor LoRA: "<attn>.processor.to_q"
                            layer = _processor_target(component, layer)
                            if layer is None:
                                return component, rest, ""
                        return component, layer, suffix
            if rest.endswith(".alpha"):
                return component, rest[: -len(".alpha")], ".alpha"
            return component, rest, ""
    return None


def _processor_target(component: str, layer: str) -> str | None:
    """``...attn1.processor.to_q`` -> ``...attn1.to_q`` (UNet) / ``...self_attn.q_proj`` (text); None if unknown."""
    head, _, name = layer.rpartition(".")
    targets = PROCESSOR_TARGETS["unet" if component == "unet" else "text"]
    if name not in targets:
        return None
    head = head[: -len(".processor")] if head.endswith(".processor") else head
    return f"{head}.{targets[name]}"


def _refuse_other_kinds(path: Path, keys: list[str]) -> None:
    for key in keys:
        for pattern, kind in OTHER_KINDS:
            if re.search(pattern, key):
                raise SdrtError(f"{path.name} is a {kind} adapter (key {key}), not a LoRA: sdrt merges only "
                                f"LoRA (lora_down/lora_up, lora_A/lora_B) files")


def _short_hash(path: Path) -> str:
    """AUTOMATIC1111's network hash of a safetensors file: sha256 of everything after the header."""
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return file_sha256(path, start=8 + header)[:12]


def read_lora(path: str | os.PathLike, prefixes: Mapping[str, str] | None = None) -> LoraFile:
    """Parse one LoRA file; a one-line SdrtError for anything that is not a readable LoRA. `prefixes`:
    the key prefixes of the model's family -> component; they win over other families' meanings of
    the same prefix, and other families' prefixes still name their component (so an SDXL LoRA on an
    SD model is "targets text_encoder_2, which this model does not have", not an unknown key)."""
    own = list(prefixes or ())
    prefixes = {**PREFIXES, **(prefixes or {})}
    path = Path(path)
    if not path.is_file():
        raise SdrtError(f"LoRA file {path} does not exist")
    try:
        from safetensors.numpy import load_file
    except ImportError as e:
        raise SdrtError(f"reading LoRA files needs safetensors ({e}): pip install sdrt") from None
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError, or OSError/ValueError
        raise SdrtError(f"{path} is not a readable safetensors file ({' '.join(str(e).split())[:160]}): "
                        f"pass a LoRA .safetensors file (.ckpt/.pt files are not read)") from None
    keys = sorted(tensors)
    if not keys:
        raise SdrtError(f"{path} holds no tensors: not a LoRA file")
    _refuse_other_kinds(path, keys)

    parts: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    unknown = []
    formats = set()
    for key in keys:
        split = _split(key, prefixes)
        if split is None or not split[2]:
            unknown.append(key)
            continue
        component, layer, suffix = split
        formats.add("kohya" if key.startswith("lora_") else "diffusers")
        role = "alpha" if suffix == ".alpha" else "up" if suffix in {u for u, _ in PAIRS} else "down"
        parts.setdefault((component, layer), {})[role] = tensors[key]
        parts[(component, layer)].setdefault("keys", {})[role] = key  # type: ignore[index]
    if unknown:
        expected = "/".join(own) if own else "kohya lora_unet_/lora_te_ or diffusers unet./text_encoder."
        raise SdrtError(f"{path.name}: {len(unknown)} of {len(keys)} keys are not LoRA keys sdrt knows "
                        f"(first: {unknown[0]}): expected {expected} keys")
    layers = []
    for (component, layer), found in sorted(parts.items()):
        names = found.pop("keys")  # type: ignore[arg-type]
        if "up" not in found or "down" not in found:
            missing = "up" if "up" not in found else "down"
            raise SdrtError(f"{path.name}: layer {layer} has no {missing} matrix (key {next(iter(names.values()))}): "
                            f"the file is incomplete")
        up, down = np.asarray(found["up"]), np.asarray(found["down"])
        if up.ndim not in (2, 4) or down.ndim not in (2, 4) or up.shape[1] != down.shape[0]:
            raise SdrtError(f"{path.name}: {names['down']} {tuple(down.shape)} and its up matrix "
                            f"{tuple(up.shape)} do not form a low-rank pair")
        alpha = float(np.asarray(found["alpha"]).reshape(-1)[0]) if "alpha" in found else float(down.shape[0])
        if not math.isfinite(alpha):
            raise SdrtError(f"{path.name}: alpha of {layer} is {alpha}: the file is corrupt")
        layers.append(LoraLayer(component, layer, up, down, alpha, names["down"]))
    name = re.sub(r"\.safetensors$", "", path.name)
    fmt = formats.pop() if len(formats) == 1 else "mixed"
    return LoraFile(path, name, fmt, tuple(layers), _short_hash(path))
