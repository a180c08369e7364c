"""Random SD3 LoRA files for the tests, in every layout people share, all holding the same matrices.

`sd3_shapes(pipe)` lists the layers SD3 LoRA trainers target (every Linear of the transformer's joint
blocks — attention projections, the second attention, feed-forwards, adaLN modulations — the
embedders, the final layer's adaLN and projection, and the patch-embedding Conv; CLIP-L/G's q/k/v/out
and MLP; T5's attention and gated feed-forward) with their weight shapes. `draw(shapes)` draws one
low-rank pair per layer (seeded); the writers save those pairs as

- `write_peft`: diffusers/PEFT (``transformer.<module>.lora_A.weight``; no alpha: alpha = rank), what
  diffusers' `load_lora_weights` reads (the T5 layers left out: diffusers' SD3 loader has no T5);
- `write_kohya`: sd-scripts' SD3 layout (``lora_unet_`` + the original MMDiT names underscored, fused
  ``attn_qkv`` layers as sd-scripts saves a split-qkv network: down matrices stacked, up block-diagonal,
  alpha = 3 x rank so the product is unchanged; the (shift, scale) adaLN halves of the last context
  block and the final layer swapped; ``lora_te1_``/``lora_te2_``/``lora_te3_`` text encoders);
- `write_prefixed`: the same diffusers names under another prefix, dotted or underscored (OneTrainer's
  ``lora_transformer_``, PEFT's ``base_model.model.``, SimpleTuner's ``lycoris_``);
- `write_comfy`: ComfyUI's ``diffusion_model.`` + dotted MMDiT names (fused like kohya's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdrt.runtime.lora.names_mmdit import mmdit_parts
from tests.runtime.lora.helpers import _pair

TRANSFORMER_ENDS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear",
                    "norm1_context.linear", "norm_out.linear", "proj_out", "context_embedder", "linear_1", "linear_2",
                    "pos_embed.proj")
CLIP = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
T5 = ("SelfAttention.q", "SelfAttention.k", "SelfAttention.v", "SelfAttention.o", "DenseReluDense.wi_0",
      "DenseReluDense.wi_1", "DenseReluDense.wo")
KOHYA_TEXT = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_", "text_encoder_3": "lora_te3_"}


def sd3_shapes(pipe, *, text: bool = True, t5: bool = False) -> dict[str, dict]:
    """component -> {module: weight shape} of the layers SD3 LoRA trainers target."""
    out = {"transformer": {name: tuple(m.weight.shape) for name, m in pipe.transformer.named_modules()
                           if name.endswith(TRANSFORMER_ENDS) and hasattr(m, "weight")}}
    encoders = [("text_encoder", CLIP), ("text_encoder_2", CLIP)] if text else []
    if t5:
        encoders.append(("text_encoder_3", T5))
    for component, ends in encoders:
        out[component] = {name: tuple(m.weight.shape) for name, m in getattr(pipe, component).named_modules()
                          if name.endswith(ends)}
    return out


def draw(shapes: dict[str, dict], *, rank: int = 4, seed: int = 0, magnitude: float = 0.3) -> dict:
    """(component, module) -> (up, down), one seeded draw per layer in a fixed order."""
    rng = np.random.default_rng(seed)
    return {(component, name): _pair(rng, shape, rank, magnitude)
            for component, layers in shapes.items() for name, shape in sorted(layers.items())}


def _save(path: Path, tensors: dict) -> Path:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path))
    return path


def write_peft(path: Path, pairs: dict, *, t5: bool = False) -> Path:
    tensors = {}
    for (component, name), (up, down) in pairs.items():
        if component == "text_encoder_3" and not t5:
            continue
        tensors[f"{component}.{name}.lora_A.weight"] = down
        tensors[f"{component}.{name}.lora_B.weight"] = up
    return _save(path, tensors)


def write_prefixed(path: Path, pairs: dict, prefix: str, *, underscores: bool) -> Path:
    """The transformer's pairs under `prefix` + the diffusers name (underscored or dotted), lora_down/up."""
    tensors = {}
    for (component, name), (up, down) in pairs.items():
        if component == "transformer":
            key = prefix + (name.replace(".", "_") if underscores else name)
            tensors[f"{key}.lora_down.weight"] = down
            tensors[f"{key}.lora_up.weight"] = up
    return _save(path, tensors)


def _mmdit(pairs: dict, modules: dict) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Original MMDiT name -> (up, down, alpha) holding the same update as the diffusers pairs."""
    out = {}
    for name, parts in mmdit_parts(modules).items():
        found = [pairs.get(("transformer", part.module)) for part in parts]
        if any(f is None for f in found):
            continue
        rank = found[0][1].shape[0]
        rows = sum(b - a for part in parts for a, b in part.rows)
        down = np.concatenate([d for _, d in found], axis=0)  # [len(parts) * rank, in, ...]
        up = np.zeros((rows, len(parts) * rank, *found[0][0].shape[2:]), dtype=np.float32)
        for j, (part, (u, _)) in enumerate(zip(parts, found)):
            index = np.concatenate([np.arange(a, b) for a, b in part.rows])
            up[index, j * rank:(j + 1) * rank] = u
        out[name] = (up, down, float(len(parts) * rank))
    return out


def write_kohya(path: Path, pairs: dict, modules: dict) -> Path:
    """sd-scripts' layout; `modules`: the transformer's diffusers modules -> weight shape."""
    tensors = {}
    for name, (up, down, alpha) in _mmdit(pairs, modules).items():
        key = "lora_unet_" + name.replace(".", "_")
        tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": np.array(alpha)})
    for (component, name), (up, down) in pairs.items():
        if component in KOHYA_TEXT:
            key = KOHYA_TEXT[component] + name.replace(".", "_")
            tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                            f"{key}.alpha": np.array(float(down.shape[0]))})
    return _save(path, tensors)


def write_comfy(path: Path, pairs: dict, modules: dict) -> Path:
    """ComfyUI's generic layout: diffusion_model.<MMDiT name>.lora_A / lora_B (fused q/k/v), with alphas."""
    tensors = {}
    for name, (up, down, alpha) in _mmdit(pairs, modules).items():
        key = "diffusion_model." + name
        tensors.update({f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up, f"{key}.alpha": np.array(alpha)})
    return _save(path, tensors)


def merge_in_torch(module, pairs: dict, component: str, scale: float) -> None:
    """W += scale * up @ down on a torch module's Linear layers (alpha = rank): the reference for
    the layers diffusers' SD3 loader cannot load (T5)."""
    import torch

    named = dict(module.named_modules())
    with torch.no_grad():
        for (c, name), (up, down) in pairs.items():
            if c == component:
                named[name].weight += scale * torch.from_numpy(up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1))
