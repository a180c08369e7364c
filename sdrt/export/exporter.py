"""diffusers folder or preset -> checked, self-describing ONNX model folder (DESIGN.md's layout).

Reads top to bottom: validate the arguments, load the source, then per component trace it,
check it against PyTorch, and (UNet) probe the latent sizes its graph supports; finally write
the tokenizer, scheduler, configs and `sdrt.json`, and rename the folder into place.
Nothing is left on disk unless every component passed.
"""

from __future__ import annotations

import copy
import datetime
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from sdrt import spec
from sdrt.errors import SdrtError
from sdrt.export import check, sizes, source, staging, trace, weight_map
from sdrt.export.graphs import GRAPHS, example_inputs, wrap
from sdrt.manifest import FORMAT, FORMAT_VERSION, write_manifest
from sdrt.manifest_schema import component_sha256

PRECISIONS = ("fp32", "fp16")

#: fp16 policy per component: None = fp16 as asked; otherwise the config key that, when true,
#: keeps the component fp32. SD VAEs overflow in fp16 (NaN/inf images at 512 px and up); diffusers
#: marks them `force_upcast: true` and runs them in fp32 even in fp16 pipelines. We do the same,
#: for both halves of the VAE, as diffusers does before encoding and decoding.
FP16_KEEP_FP32_IF: dict[str, str | None] = {
    "text_encoder": None,
    "unet": None,
    "vae_decoder": "force_upcast",
    "vae_encoder": "force_upcast",
}


def export_model(model: str, out: str | Path, *, opset: int = trace.DEFAULT_OPSET, precision: str = "fp32",
                 components: Sequence[str] | None = None, force: bool = False, exporter: str = "dynamo",
                 log: Callable[[str], None] = print) -> Path:
    """Export `model` (a diffusers folder or a preset name) into the ONNX model folder `out`."""
    out = Path(out)
    components = list(components or spec.COMPONENT_NAMES)

    # 1. Arguments: everything that can be wrong without loading a model fails here.
    trace.check_opset(exporter, opset)
    if precision not in PRECISIONS:
        raise SdrtError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    unknown = [c for c in components if c not in spec.COMPONENT_NAMES]
    if unknown:
        raise SdrtError(f"unknown component {unknown[0]!r}: choose from {', '.join(spec.COMPONENT_NAMES)}")
    components = [c for c in spec.COMPONENT_NAMES if c in components]  # spec order: unet before the VAE
    staging.check_target(out, force)
    source.resolve(model)

    # 2. The source, in fp32.
    started = time.perf_counter()
    src = source.load(model)
    pipeline = pipeline_facts(src)
    values = spec.model_values(latent_channels=pipeline["latent_channels"],
                               unet_in_channels=pipeline["unet_in_channels"],
                               text_hidden_size=pipeline["text_hidden_size"],
                               vae_scale_factor=pipeline["vae_scale_factor"],
                               token_length=pipeline["token_length"])
    vocab_size = int(src.text_encoder.config.vocab_size)
    log(f"loaded {src.kind} {src.name} ({src.class_name}) in {time.perf_counter() - started:.1f} s")

    # The trace shape: batch 2, the model's latent size, non-square (every check shape differs).
    multiple = sizes.architectural_multiple(src.unet)
    h = max(pipeline["sample_size"] // multiple, 2) * multiple
    trace_dims = {**values, "B": 2, "h": h, "w": max(h * 3 // 4 // multiple, 1) * multiple}

    with staging.terminate_as_exception(), staging.staged_folder(out, force) as tmp:
        size_rule = sizes.unprobed(src.unet, pipeline["sample_size"])
        entries: dict[str, dict[str, Any]] = {}
        for component in components:
            # 3. Trace.
            started = time.perf_counter()
            module = getattr(src, GRAPHS[component][0])
            component_precision, note = precision_policy(component, precision, module)
            path = tmp / component / "model.onnx"
            path.parent.mkdir()
            graph_module = copy.deepcopy(module).half() if component_precision == "fp16" else module
            example = example_inputs(component, trace_dims, vocab_size=vocab_size, seed=0,
                                     dtype=check.torch_dtype(component_precision))
            trace.export_graph(wrap(component, graph_module), component, example, path, opset=opset,
                               exporter=exporter, precision=component_precision)
            mapped = (weight_map.write(graph_module, f"{GRAPHS[component][0]}.", path)
                      if component in weight_map.COMPONENTS else None)
            del graph_module, example
            exported_s = time.perf_counter() - started

            # 4. Sizes (UNet): which latent sizes the graph really supports.
            started = time.perf_counter()
            if component == "unet":
                size_rule = sizes.probe(src.unet, path, values, precision=component_precision,
                                        vocab_size=vocab_size, sample_size=pipeline["sample_size"])
            # 5. Check against PyTorch at shapes off the trace.
            shapes = check.check_dims(component, trace_dims, size_rule)
            result = check.check_component(component, module, path, values, shapes,
                                           precision=component_precision, vocab_size=vocab_size)
            save_config(module, path.parent)
            data = path.with_name(path.name + ".data")
            entries[component] = {
                "file": f"{component}/model.onnx",
                "external_data": data.exists(),
                "precision": component_precision,
                "sha256": component_sha256([path, data]),
                "precision_note": note,
                "export_seconds": round(exported_s, 1),
                "check": result,
            }
            if mapped:
                entries[component]["weight_map"] = mapped  # for LoRA at run time (sdrt.runtime.lora)
            log(f"{component}: exported in {exported_s:.1f} s ({component_precision}"
                f"{', external data' if data.exists() else ''}); check max rel error {result['max_rel_error']:.2g}"
                f" (threshold {result['threshold']['max_rel']:g}) in {time.perf_counter() - started:.1f} s")

        # 6. The rest of the folder.
        from sdrt.export.tokenizer_files import write_tokenizer

        write_tokenizer(src.tokenizer, tmp / "tokenizer")
        (tmp / "scheduler").mkdir()
        write_json(tmp / "scheduler" / "scheduler_config.json", src.scheduler_config)
        write_json(tmp / "model_index.json", src.model_index)
        write_manifest(tmp, manifest(src, pipeline, size_rule, entries, opset=opset, exporter=exporter))
    log(f"wrote {out}")
    return out


def precision_policy(component: str, precision: str, module: Any) -> tuple[str, str]:
    """(precision, why) of one component under --precision."""
    if precision == "fp32":
        return "fp32", "fp32 as asked (--precision fp32)"
    key = FP16_KEEP_FP32_IF[component]
    if key and module.config.get(key, False):
        return "fp32", (f"kept fp32 under --precision fp16: the VAE config has {key}=true (SD VAEs overflow "
                        f"in fp16; diffusers runs them in fp32 too)")
    return "fp16", "fp16 as asked (--precision fp16); the check compares it with the fp32 PyTorch module"


def pipeline_facts(src: source.Source) -> dict[str, Any]:
    """What the runtime needs to know about the model, read from its configs (never assumed)."""
    unet, vae, text = src.unet.config, src.vae.config, src.text_encoder.config
    latent_channels = int(vae.latent_channels)
    if int(unet.cross_attention_dim) != int(text.hidden_size):
        raise SdrtError(f"the UNet's cross_attention_dim {unet.cross_attention_dim} differs from the text "
                        f"encoder's hidden_size {text.hidden_size}: the pipeline's components do not match")
    if int(unet.out_channels) != latent_channels:
        raise SdrtError(f"the UNet predicts {unet.out_channels} channels but the VAE has {latent_channels} "
                        f"latent channels: the pipeline's components do not match")
    return {
        "class_name": src.class_name,
        "prediction_type": src.scheduler_config.get("prediction_type", "epsilon"),
        "scaling_factor": float(vae.scaling_factor),
        "shift_factor": vae.get("shift_factor"),
        "vae_scale_factor": 2 ** (len(vae.block_out_channels) - 1),
        "latent_channels": latent_channels,
        "unet_in_channels": int(unet.in_channels),
        "text_hidden_size": int(text.hidden_size),
        "token_length": spec.TOKEN_LENGTH,
        "sample_size": int(unet.sample_size),
        "inpainting": int(unet.in_channels) == 2 * latent_channels + 1,
        "vae_decoder_input": "latents already divided by scaling_factor (diffusers' pipeline divides "
                             "before vae.decode)",
        "vae_encoder_output": "raw diagonal-Gaussian parameters (mean, logvar) on channels; multiply "
                              "the sampled latents by scaling_factor",
    }


def manifest(src: source.Source, pipeline: dict[str, Any], size_rule: dict[str, Any],
             entries: dict[str, dict[str, Any]], *, opset: int, exporter: str) -> dict[str, Any]:
    import diffusers
    import onnx
    import onnxruntime
    import onnxscript
    import torch
    import transformers

    from sdrt import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sdrt_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {"kind": src.kind, "name": src.name, "path": str(src.path) if src.path else None,
                   "content_hash": src.content_hash},
        "exporter": {"method": exporter, "opset": opset, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxscript": onnxscript.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "onnxruntime_check": onnxruntime.__version__},
        "pipeline": pipeline,
        "sizes": size_rule,
        "components": entries,
    }


def save_config(module: Any, folder: Path) -> None:
    """The component's own config.json (transformers and diffusers spell the call differently)."""
    if hasattr(module.config, "save_pretrained"):
        module.config.save_pretrained(folder)
    else:
        module.save_config(folder)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
