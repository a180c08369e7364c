"""A diffusers ControlNet folder -> a checked ONNX ControlNet folder, with the same `sdrt export` command.

A ControlNet folder (``config.json`` of a ``ControlNetModel`` plus its weights, no
``model_index.json``) is a source kind of its own. Its manifest (``pipeline.kind`` "controlnet")
records what base it fits: the family (SDXL's ControlNets take ``text_embeds``/``time_ids``), the
cross-attention width D, the latent channels C, the control image's downscale f (its conditioning
embedding's: the base VAE's must be the same), the control image's channels, and the residual
layout (`sdrt.spec.residuals`), which must equal the base UNet's. The graph (`ControlNetGraph`)
gives the residuals already scaled (one scale per residual: a plain scale or guess mode's ramp).
Like a model export: checked against PyTorch at other shapes, fp16 on request, written atomically.
"""

from __future__ import annotations

import copy
import json
import time
import types
from pathlib import Path
from typing import Any, Callable

from sdrt import spec
from sdrt.errors import SdrtError
from sdrt.manifest import CONTROLNET_KIND, FORMAT, FORMAT_VERSION, write_manifest
from sdrt.manifest_schema import component_bytes, component_sha256

#: the diffusers classes a ControlNet folder's config may name, and whether sdrt exports them
CONTROLNET_CLASSES = {"ControlNetModel": True, "ControlNetUnionModel": False, "ControlNetXSAdapter": False,
                      "SD3ControlNetModel": False, "FluxControlNetModel": False}
#: SDXL ControlNets take the base's 6 time ids (original size, crop, target size)
SDXL_TIME_IDS = 6
COMPONENT = "controlnet"


def folder_class(model: str | Path) -> str | None:
    """The `_class_name` of a folder that holds a diffusers model config and no pipeline index, else None."""
    path = Path(model).expanduser()
    if not path.is_dir() or (path / "model_index.json").exists() or not (path / "config.json").is_file():
        return None
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = config.get("_class_name") if isinstance(config, dict) else None
    return name if name in CONTROLNET_CLASSES else None


def is_controlnet_folder(model: str | Path) -> bool:
    return folder_class(model) is not None


def residual_layout(model: Any) -> spec.Residuals:
    """The residuals of a UNet2DConditionModel's or a ControlNetModel's down path, in diffusers' order:
    conv_in's output, each resnet's (with its attention), each downsampler's; then the mid block's."""
    down = [(int(model.conv_in.out_channels), 1)]
    factor = 1
    for block in model.down_blocks:
        for resnet in block.resnets:
            down.append((int(resnet.out_channels), factor))
        for sampler in getattr(block, "downsamplers", None) or ():
            factor *= 2
            down.append((int(sampler.out_channels), factor))
    if getattr(model, "mid_block", None) is None:
        raise SdrtError("the model has no mid block: sdrt's ControlNet support needs one (as SD 1.x/2.x and SDXL have)")
    return spec.Residuals(tuple(down), (int(model.mid_block.resnets[-1].out_channels), factor))


def _load(path: Path) -> Any:
    import diffusers
    import torch

    from sdrt.export.source import quiet_libraries

    name = folder_class(path)
    if not CONTROLNET_CLASSES.get(name, False):
        raise SdrtError(f"{path} holds a {name}, not supported yet: sdrt exports ControlNetModel folders "
                        f"(SD 1.x/2.x and SDXL ControlNets)")
    try:
        with quiet_libraries():
            return diffusers.ControlNetModel.from_pretrained(path, torch_dtype=torch.float32,
                                                             local_files_only=True).eval()
    except Exception as e:  # corrupt or mismatched files: safetensors, torch and config errors alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SdrtError(f"cannot load the ControlNet from {path}: {first[:200]}") from None


def controlnet_facts(model: Any) -> dict[str, Any]:
    """What a base must have for this ControlNet to fit it, read from its config (never assumed)."""
    config = model.config
    if config.get("global_pool_conditions"):
        raise SdrtError("the ControlNet has global_pool_conditions (a shuffle-style ControlNet): not supported yet")
    sdxl = config.get("addition_embed_type") == "text_time"
    family = "sdxl" if sdxl else "sd"
    dims: dict[str, int] = {}
    if sdxl:
        dims = {"T": SDXL_TIME_IDS, "P": int(config.projection_class_embeddings_input_dim)
                - SDXL_TIME_IDS * int(config.addition_time_embed_dim)}
    elif config.get("addition_embed_type") is not None or config.get("class_embed_type") is not None:
        raise SdrtError(f"the ControlNet has addition_embed_type {config.get('addition_embed_type')!r} / "
                        f"class_embed_type {config.get('class_embed_type')!r}: sdrt exports SD 1.x/2.x and SDXL "
                        f"ControlNets")
    if config.get("time_cond_proj_dim") is not None:
        raise SdrtError("the ControlNet has time_cond_proj_dim (an LCM-distilled ControlNet): not supported yet")
    layout = residual_layout(model)
    if len(model.controlnet_down_blocks) != len(layout.down):
        raise SdrtError(f"the ControlNet has {len(model.controlnet_down_blocks)} output convolutions for "
                        f"{len(layout.down)} down-block residuals: its config and weights do not match")
    embedding = config.conditioning_embedding_out_channels
    return {
        "family": family,
        "kind": CONTROLNET_KIND,
        "class_name": type(model).__name__,
        "dims": dims,
        "latent_channels": int(config.in_channels),
        "unet_in_channels": int(config.in_channels),
        "text_hidden_size": int(config.cross_attention_dim),
        "token_length": spec.TOKEN_LENGTH,
        "vae_scale_factor": 2 ** (len(embedding) - 1),
        "conditioning_channels": int(config.conditioning_channels),
        "residuals": layout.to_json(),
    }


def export_controlnet(path: Path, out: Path, *, opset: int, precision: str, force: bool, exporter: str,
                      log: Callable[[str], None]) -> Path:
    """Export the ControlNet folder at `path` into the ONNX ControlNet folder `out` (see the module docstring)."""
    from sdrt.export import check, sizes, staging, trace
    from sdrt.export.exporter import manifest, precision_policy, save_config
    from sdrt.export.graphs import example_inputs, wrap
    from sdrt.export.source import hash_folder

    started = time.perf_counter()
    module = _load(path)
    pipeline = controlnet_facts(module)
    residuals = spec.Residuals.from_json(pipeline["residuals"])
    model_spec = spec.controlnet_spec(pipeline["family"], residuals, pipeline["conditioning_channels"])
    comp = model_spec.component(COMPONENT)
    values = spec.model_values(latent_channels=pipeline["latent_channels"],
                               unet_in_channels=pipeline["unet_in_channels"],
                               text_hidden_size=pipeline["text_hidden_size"],
                               vae_scale_factor=pipeline["vae_scale_factor"], extra=pipeline["dims"])
    log(f"loaded ControlNet {path.name} in {time.perf_counter() - started:.1f} s; for {pipeline['family']} bases "
        f"(cross-attention width {pipeline['text_hidden_size']}, {residuals.describe()})")
    multiple = residuals.mid[1]
    trace_dims = {**values, "B": 2, "h": 4 * multiple, "w": 3 * multiple, "L": spec.TOKEN_LENGTH}
    size_rule = {"latent_multiple": 1, "min_latent": 1, "max_latent": sizes.MAX_LATENT_CAP,
                 "rule": "a ControlNet runs at the latent sizes of the base it is loaded with (it has no "
                         "upsampler; checked at odd sizes against PyTorch)", "probed": []}
    with staging.terminate_as_exception(), staging.staged_folder(out, force) as tmp:
        started = time.perf_counter()
        component_precision, note = precision_policy(comp, precision, module)
        target = tmp / COMPONENT / "model.onnx"
        target.parent.mkdir()
        graph_module = copy.deepcopy(module).half() if component_precision == "fp16" else module
        example = example_inputs(comp, trace_dims, vocab_size=1, seed=0, dtype=check.torch_dtype(component_precision))
        trace.export_graph(wrap(comp, graph_module, model_spec), comp, example, target, opset=opset,
                           exporter=exporter, precision=component_precision)
        exported_s = time.perf_counter() - started
        del graph_module
        shapes = check.check_dims(comp, trace_dims, size_rule)
        result = check.check_component(comp, module, target, values, shapes, precision=component_precision,
                                       vocab_size=1, model=model_spec)
        save_config(module, target.parent)
        data = target.with_name(target.name + ".data")
        entry = {"file": f"{COMPONENT}/model.onnx", "external_data": data.exists(), "precision": component_precision,
                 "sha256": component_sha256([target, data]), "bytes": component_bytes([target, data]),
                 "precision_note": note, "export_seconds": round(exported_s, 1), "check": result}
        log(f"{COMPONENT}: exported in {exported_s:.1f} s ({component_precision}); check max rel error "
            f"{result['max_rel_error']:.2g} (threshold {result['threshold']['max_rel']:g})")
        src = types.SimpleNamespace(kind="folder", name=path.name, path=path.resolve(), content_hash=hash_folder(path))
        write_manifest(tmp, manifest(src, pipeline, size_rule, {COMPONENT: entry}, opset=opset, exporter=exporter))
    log(f"wrote {out}")
    return out
