"""An IP-Adapter folder (diffusers' `load_ip_adapter` layout) -> a checked ONNX IP-Adapter folder, with `sdrt export`.

The source folder holds one ``*.safetensors`` with ``image_proj.*`` and ``ip_adapter.<id>.to_k_ip /
to_v_ip`` weights (``ip-adapter_sd15.safetensors``) and an ``image_encoder/`` folder holding a
``CLIPVisionModelWithProjection`` (h94/IP-Adapter's ``models`` folder). Two graphs are exported
(`sdrt.spec.ip_adapter`): ``image_encoder`` (CLIP vision -> image_embeds) and ``image_proj`` (the image
projection, then every layer's to_k_ip / to_v_ip: the keys and values the UNet attends to; they are
computed once per call, not per step). Each is checked against PyTorch like every component. Its
manifest (``pipeline.kind`` "ip_adapter") records the layout a base's UNet must match: the
cross-attention width D and the width of each cross-attention layer. The plain IP-Adapter
(``ImageProjection``: 4 tokens) is supported; Plus, Full-face and FaceID variants are refused by name.
"""

from __future__ import annotations

import copy
import time
import types
from pathlib import Path
from typing import Any, Callable

from sdrt import spec
from sdrt.errors import SdrtError
from sdrt.manifest import IP_ADAPTER_KIND, write_manifest
from sdrt.manifest_schema import component_bytes, component_sha256

ENCODER_FOLDER = "image_encoder"
#: the diffusers ImageProjection's tokens (the plain IP-Adapter)
TOKENS = 4
#: SDXL's cross-attention width: an IP-Adapter of this width is recorded as an SDXL one
SDXL_WIDTH = 2048


def weight_file(model: str | Path) -> Path | None:
    """The IP-Adapter weights of a folder in diffusers' layout (None: not such a folder)."""
    path = Path(model).expanduser()
    if not path.is_dir() or (path / "model_index.json").exists() or not (path / ENCODER_FOLDER / "config.json").is_file():
        return None
    files = sorted(path.glob("*.safetensors"))
    return files[0] if len(files) == 1 else None


def is_ip_adapter_folder(model: str | Path) -> bool:
    return weight_file(model) is not None


def projection(state: dict[str, Any]) -> Any:
    """The torch module image_embeds -> (key_0, value_0, key_1, ...) of the IP-Adapter's state dict."""
    import torch
    from diffusers.models.embeddings import ImageProjection

    proj = {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")}
    layers = {k[len("ip_adapter."):]: v for k, v in state.items() if k.startswith("ip_adapter.")}
    if "proj.weight" not in proj:
        kind = ("an IP-Adapter Full-face" if "proj.3.weight" in proj else "an IP-Adapter FaceID" if "norm.weight" in proj
                and "proj.0.weight" in proj else "an IP-Adapter Plus (a resampler)" if "latents" in proj
                else "not an IP-Adapter")
        raise SdrtError(f"the weights are {kind}: sdrt exports the plain IP-Adapter (image_proj.proj.weight, "
                        f"4 tokens) for now")
    width = int(proj["proj.weight"].shape[0]) // TOKENS
    embed = int(proj["proj.weight"].shape[1])
    ids = sorted({int(k.split(".")[0]) for k in layers})
    if not ids or ids != list(range(1, 2 * len(ids), 2)):
        raise SdrtError(f"the IP-Adapter's ip_adapter.* keys are numbered {ids[:6]}..., not 1, 3, 5, ...: the file is "
                        f"not in diffusers' load_ip_adapter layout")

    class Module(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image_proj = ImageProjection(cross_attention_dim=width, image_embed_dim=embed,
                                              num_image_text_embeds=TOKENS)
            self.image_proj.load_state_dict({k.replace("proj", "image_embeds"): v for k, v in proj.items()})
            self.keys = torch.nn.ModuleList()
            self.values = torch.nn.ModuleList()
            for i in ids:
                for target, name in ((self.keys, "to_k_ip"), (self.values, "to_v_ip")):
                    weight = layers[f"{i}.{name}.weight"]
                    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
                    linear.weight.data.copy_(weight)
                    target.append(linear)

        def forward(self, image_embeds: torch.Tensor) -> tuple[torch.Tensor, ...]:
            tokens = self.image_proj(image_embeds)
            return tuple(out for k, v in zip(self.keys, self.values) for out in (k(tokens), v(tokens)))

    module = Module().eval()
    module.widths = tuple(int(k.weight.shape[0]) for k in module.keys)
    module.cross_attention_dim, module.embed_dim = width, embed
    return module


def _load(path: Path) -> tuple[Any, Any]:
    import torch
    import transformers
    from safetensors.torch import load_file

    from sdrt.export.source import quiet_libraries

    weights = weight_file(path)
    try:
        state = load_file(str(weights))
        with quiet_libraries():
            encoder = transformers.CLIPVisionModelWithProjection.from_pretrained(
                path / ENCODER_FOLDER, torch_dtype=torch.float32, local_files_only=True).eval()
    except Exception as e:  # corrupt or mismatched files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SdrtError(f"cannot load the IP-Adapter from {path}: {first[:200]}") from None
    return encoder, projection(state)


def export_ip_adapter(path: Path, out: Path, *, opset: int, precision: str, force: bool, exporter: str,
                      log: Callable[[str], None]) -> Path:
    """Export the IP-Adapter folder at `path` into the ONNX IP-Adapter folder `out` (see the module docstring)."""
    from sdrt.export import check, sizes, staging, trace
    from sdrt.export.exporter import manifest, precision_policy, save_config
    from sdrt.export.graphs import example_inputs, wrap
    from sdrt.export.source import hash_folder

    started = time.perf_counter()
    encoder, proj = _load(path)
    image_size = int(encoder.config.image_size)
    layout = spec.IPAdapterLayout(TOKENS, proj.widths, proj.embed_dim, image_size, proj.cross_attention_dim)
    if int(encoder.config.projection_dim) != layout.embed_dim:
        raise SdrtError(f"the image encoder gives {encoder.config.projection_dim}-wide embeddings, the IP-Adapter's "
                        f"projection takes {layout.embed_dim}: use the image encoder it was trained with")
    family = "sdxl" if layout.cross_attention_dim == SDXL_WIDTH else "sd"
    model_spec = spec.ip_adapter_spec(family, layout)
    log(f"loaded IP-Adapter {path.name} in {time.perf_counter() - started:.1f} s; {len(layout.widths)} cross-attention "
        f"layers, cross-attention width {layout.cross_attention_dim}, image encoder {image_size} px")
    pipeline = {"family": family, "kind": IP_ADAPTER_KIND, "class_name": "IPAdapter", "dims": {},
                "text_hidden_size": layout.cross_attention_dim, "token_length": spec.TOKEN_LENGTH,
                # an IP-Adapter has no latents: these three satisfy the manifest schema, nothing reads them
                "latent_channels": 1, "unet_in_channels": 1, "vae_scale_factor": 1,
                "ip_adapter": layout.to_json(), "weight_name": weight_file(path).name}
    size_rule = {"latent_multiple": 1, "min_latent": 1, "max_latent": sizes.MAX_LATENT_CAP,
                 "rule": "an IP-Adapter runs once per call at its image encoder's size, whatever the latent size "
                         "of the base it is loaded with", "probed": []}
    entries = {}
    trace_dims = {"B": 2, "h": 1, "w": 1, "L": spec.TOKEN_LENGTH}
    with staging.terminate_as_exception(), staging.staged_folder(out, force) as tmp:
        for comp, module in zip(model_spec.components, (encoder, proj)):
            t0 = time.perf_counter()
            component_precision, note = precision_policy(comp, precision, module)
            target = tmp / comp.name / "model.onnx"
            target.parent.mkdir()
            graph_module = copy.deepcopy(module).half() if component_precision == "fp16" else module
            example = example_inputs(comp, trace_dims, vocab_size=1, seed=0,
                                     dtype=check.torch_dtype(component_precision))
            trace.export_graph(wrap(comp, graph_module, model_spec), comp, example, target, opset=opset,
                               exporter=exporter, precision=component_precision)
            exported_s = time.perf_counter() - t0
            shapes = [{"B": 1, "h": 1, "w": 1, "L": spec.TOKEN_LENGTH}, {"B": 3, "h": 1, "w": 1, "L": spec.TOKEN_LENGTH}]
            result = check.check_component(comp, module, target, {}, shapes, precision=component_precision,
                                           vocab_size=1, model=model_spec)
            if comp.name == ENCODER_FOLDER:
                save_config(module, target.parent)
            data = target.with_name(target.name + ".data")
            entries[comp.name] = {"file": f"{comp.name}/model.onnx", "external_data": data.exists(),
                                  "precision": component_precision, "sha256": component_sha256([target, data]),
                                  "bytes": component_bytes([target, data]), "precision_note": note,
                                  "export_seconds": round(exported_s, 1), "check": result}
            log(f"{comp.name}: exported in {exported_s:.1f} s ({component_precision}); check max rel error "
                f"{result['max_rel_error']:.2g} (threshold {result['threshold']['max_rel']:g})")
        src = types.SimpleNamespace(kind="folder", name=path.name, path=path.resolve(), content_hash=hash_folder(path))
        write_manifest(tmp, manifest(src, pipeline, size_rule, entries, opset=opset, exporter=exporter))
    log(f"wrote {out}")
    return out
