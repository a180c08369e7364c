"""diffusers folder or preset -> checked, self-describing ONNX model folder (DESIGN.md's layout).

Reads top to bottom: validate the arguments, load the source, then per component trace it,
check it against PyTorch, and (UNet) probe the latent sizes its graph supports; finally write
the tokenizer, scheduler, configs and `sdrt.json`, and rename the folder into place.
Nothing is left on disk unless every component passed.
"""

from __future__ import annotations

import copy
import datetime
import gc
import json
import shutil
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from sdrt import residual_graph, spec
from sdrt.errors import SdrtError
from sdrt.system_memory import available_bytes
from sdrt.export import (check, controlnet, ip_adapter, sizes, sizes_transformer, source, staging, streamed, trace,
                         weight_map)
from sdrt.export.graphs import example_inputs, wrap
from sdrt.manifest import FORMAT, FORMAT_VERSION, write_manifest
from sdrt.manifest_schema import component_bytes, component_sha256

PRECISIONS = ("fp32", "fp16")


def _vs_float64(result: dict) -> str:
    """"; passed against float64: ..." where the float64 referee decided (sdrt.export.check.within)."""
    if result["max_rel_error"] <= result["threshold"]["max_rel"]:
        return ""
    worst = max((s["vs_float64"] for s in result["shapes"] if "vs_float64" in s), key=lambda e: e["onnx_rel_error"])
    return (f"; passed against float64: onnx {worst['onnx_rel_error']:.2g} vs torch fp32 "
            f"{worst['torch_fp32_rel_error']:.2g}")


def export_model(model: str, out: str | Path, *, opset: int = trace.DEFAULT_OPSET, precision: str = "fp32",
                 components: Sequence[str] | None = None, force: bool = False, exporter: str = "dynamo",
                 hidden_states: bool = False, stream: Sequence[str] = (), log: Callable[[str], None] = print,
                 vae: str | None = None, unsafe_pickle: bool = False, prediction_type: str | None = None) -> Path:
    """Export `model` (a diffusers folder or a preset name) into the ONNX model folder `out`.

    `hidden_states`: SD 1.x/2.x text encoders also give their layer stack (what `clip_skip` needs;
    SDXL exports always have it). `stream`: components to export streamed (sdrt.export.streamed:
    weights copied tensor by tensor in their stored dtype; automatic above its STREAM_BYTES).
    `vae`: another VAE (file or folder) in place of the model's; `unsafe_pickle`: read a .ckpt single
    file; `prediction_type`: override the scheduler's."""
    out = Path(out)

    # 1. Arguments: everything that can be wrong without loading a model fails here.
    trace.check_opset(exporter, opset)
    if precision not in PRECISIONS:
        raise SdrtError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    unknown = [c for c in [*(components or ()), *stream] if c not in spec.component_names()]
    if unknown:
        raise SdrtError(f"unknown component {unknown[0]!r}: choose from {', '.join(spec.component_names())}")
    staging.check_target(out, force)
    if controlnet.is_controlnet_folder(model):  # a ControlNet folder: its own export, the same command
        return controlnet.export_controlnet(Path(model), out, opset=opset, precision=precision, force=force,
                                            exporter=exporter, log=log)
    if ip_adapter.is_ip_adapter_folder(model):  # an IP-Adapter folder (diffusers' load_ip_adapter layout)
        return ip_adapter.export_ip_adapter(Path(model), out, opset=opset, precision=precision, force=force,
                                            exporter=exporter, log=log)
    source.resolve(model)

    # 2. The source, in fp32, and the model spec its family and variants give.
    started = time.perf_counter()
    if prediction_type not in (None, "epsilon", "v_prediction", "sample"):
        raise SdrtError(f"prediction type {prediction_type!r} is not one of: epsilon, v_prediction, sample")
    src = source.load(model, unsafe_pickle=unsafe_pickle, prediction_type=prediction_type, vae=vae)
    pipeline = pipeline_facts(src, hidden_states=hidden_states)
    model_spec = spec.model_spec(pipeline["family"], pipeline["variants"])
    absent = [c for c in components or () if not model_spec.has(c)]
    if absent:
        raise SdrtError(f"a {pipeline['family']} model has no {absent[0]} (its components: "
                        f"{', '.join(model_spec.component_names)}): drop it from --components")
    components = [c for c in model_spec.component_names if c in (components or model_spec.component_names)]
    # a variant whose own component is left out is off (SD3 exported without its T5 runs on zeros)
    for variant in list(pipeline["variants"]):
        others = [v for v in pipeline["variants"] if v != variant]
        own = set(model_spec.component_names) - set(spec.model_spec(pipeline["family"], others).component_names)
        if own and not own & set(components):
            pipeline["variants"] = others
            model_spec = spec.model_spec(pipeline["family"], others)
    # the denoiser is traced and checked with ControlNet residual inputs, stored without them
    # (sdrt.residual_graph: a ControlNet adds them back at load, without re-export)
    residuals = spec.Residuals.from_json(pipeline["residuals"]) if "residuals" in pipeline else None
    traced_spec = spec.model_spec(pipeline["family"], pipeline["variants"], residuals)
    values = spec.model_values(latent_channels=pipeline["latent_channels"],
                               unet_in_channels=pipeline["unet_in_channels"],
                               text_hidden_size=pipeline["text_hidden_size"],
                               vae_scale_factor=pipeline["vae_scale_factor"],
                               token_length=pipeline["token_length"], extra=pipeline["dims"])
    streaming = streamed.streamed_components(src, model_spec, components, stream, available=available_bytes())
    described = f" with the {src.config_preset} configs" if src.config_preset else ""
    described += f", VAE {src.vae}" if src.vae else ""
    log(f"loaded {src.kind} {src.name} ({src.class_name}{described}) in {time.perf_counter() - started:.1f} s; "
        f"model family {pipeline['family']}" + (f" ({', '.join(pipeline['variants'])})" if pipeline["variants"] else ""))

    # The trace shape: batch 2, the model's latent size, non-square (every check shape differs).
    # (a transformer's config only: its weights are loaded when its turn comes)
    geometry = denoiser_sizes(src, model_spec.denoiser.source, pipeline["sample_size"])
    h, w = geometry.trace_latent()
    trace_dims = {**values, "B": 2, "h": h, "w": w, "L": spec.TOKEN_LENGTH}

    with staging.terminate_as_exception(), staging.staged_folder(out, force) as tmp:
        job = _Job(src, model_spec, traced_spec, residuals, values, trace_dims, geometry, tmp, opset, exporter)
        size_rule = geometry.unprobed()
        entries: dict[str, dict[str, Any]] = {}
        for index, component in enumerate(components):
            comp = traced_spec.component(component)
            later = any(model_spec.component(c).source == comp.source for c in components[index + 1:])
            config = types.SimpleNamespace(config=src.config(comp.source))  # the policy reads configs only
            chosen, note = precision_policy(comp, precision, config)
            # larger than memory in fp32: traced without weights, weights copied (sdrt.export.streamed)
            export = job.export_streamed if component in streaming else job.export
            fallback = chosen == "fp16" and component in model_spec.family.fp16_fallback
            try:
                entries[component], size_rule = export(comp, chosen, note, size_rule, free=not (later or fallback))
            except check.CheckFailed as failure:
                if not fallback:
                    raise
                log(f"{component}: the fp16 graph failed its check ({failure.measured}): exporting it in fp32")
                shutil.rmtree(tmp / component)
                note = (f"kept fp32 under --precision fp16: the fp16 graph failed the export check ({failure.measured}; "
                        f"this family's {component} is known to overflow or lose precision in fp16)")
                entries[component], size_rule = export(comp, "fp32", note, size_rule, free=not later)
            if fallback and not later:
                src.free(comp.source)
                gc.collect()
            entry, result = entries[component], entries[component]["check"]
            how = f"streamed, {entry['storage']} weights, " if "storage" in entry else ""
            log(f"{component}: exported in {entry['export_seconds']:.1f} s ({how}{entry['precision']}"
                f"{', external data' if entry['external_data'] else ''}); check max rel error "
                f"{result['max_rel_error']:.2g} (threshold {result['threshold']['max_rel']:g}{_vs_float64(result)}) in "
                f"{result.pop('seconds'):.1f} s")

        # 6. The rest of the folder.
        from sdrt.export.tokenizer_files import write_tokenizer
        from sdrt.export.tokenizer_t5 import write_t5_tokenizer

        for encoder in model_spec.text_encoders:
            folder = model_spec.family.text_encoders[encoder][0]
            kind = model_spec.family.tokenizer_kinds.get(folder, "clip")
            (write_t5_tokenizer if kind == "t5" else write_tokenizer)(src.tokenizers[folder], tmp / folder)
        (tmp / "scheduler").mkdir()
        write_json(tmp / "scheduler" / "scheduler_config.json", src.scheduler_config)
        write_json(tmp / "model_index.json", src.model_index)
        write_manifest(tmp, manifest(src, pipeline, size_rule, entries, opset=opset, exporter=exporter))
    log(f"wrote {out}")
    return out


@dataclass
class _Job:
    """One export's fixed inputs: what tracing and checking each component needs."""

    src: source.Source
    model_spec: spec.ModelSpec
    traced_spec: spec.ModelSpec  # model_spec with the denoiser's ControlNet residual inputs, if it has any
    residuals: spec.Residuals | None
    values: dict[str, int]
    trace_dims: dict[str, int]
    geometry: Any
    tmp: Path
    opset: int
    exporter: str

    def export_streamed(self, comp: spec.ComponentSpec, component_precision: str, note: str,
                        size_rule: dict[str, Any], *, free: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """Export one component streamed (sdrt.export.streamed: traced without weights, the weights
        copied from the folder's files, checked against PyTorch with the 16-bit module lifted layer by
        layer); its manifest entry and the size rule. The streamed export frees its own module."""
        entry, probed = streamed.export_component(
            self.src, comp, self.model_spec, self.tmp / comp.name / "model.onnx", trace_dims=self.trace_dims,
            values=self.values, size_rule=size_rule, opset=self.opset, precision=component_precision, note=note,
            geometry=self.geometry)
        return entry, probed or size_rule

    def export(self, comp: spec.ComponentSpec, component_precision: str, note: str, size_rule: dict[str, Any], *,
               free: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """Trace one component, check it against PyTorch (the denoiser: and probe its sizes); its manifest
        entry and the size rule. `free`: drop the module once PyTorch's side of the check has run."""
        component, model_spec, traced_spec = comp.name, self.model_spec, self.traced_spec
        marked = self._marked(comp)
        # 3. Trace.
        started = time.perf_counter()
        module = self.src.module(comp.source)
        vocab_size = vocab_size_of(module)
        path = self.tmp / component / "model.onnx"
        path.parent.mkdir()
        graph_module = copy.deepcopy(module).half() if component_precision == "fp16" else module
        example = example_inputs(comp, self.trace_dims, vocab_size=vocab_size, seed=0,
                                 dtype=check.torch_dtype(component_precision))
        trace.export_graph(wrap(comp, graph_module, traced_spec), comp, example, path, opset=self.opset,
                           exporter=self.exporter, precision=component_precision)
        if marked:
            residual_graph.strip(path, self.residuals)
        mapped = (weight_map.write(graph_module, f"{comp.source}.", path, run=lambda: wrap(
            comp, graph_module, traced_spec)(*(example[name] for name in comp.input_names)))
                  if component in model_spec.family.lora_components else None)
        del graph_module, example
        exported_s = time.perf_counter() - started

        # 4. The PyTorch side of the checks first (the denoiser: the size probe too), then the module is
        # freed when no later step needs it, then ONNX Runtime judges the graph: a large UNet and its
        # check session are never in memory together.
        started = time.perf_counter()
        probe_cases = None
        if component == model_spec.family.denoiser:
            probe_cases = self.geometry.probe_cases(module, self.values, precision=component_precision,
                                                    vocab_size=vocab_size, model=traced_spec)
        shapes = check.check_dims(comp, self.trace_dims, size_rule)
        cases = check.reference_cases(comp, module, self.values, shapes, precision=component_precision,
                                      vocab_size=vocab_size, model=traced_spec)
        save_config(module, path.parent)
        del module
        if free:
            self.src.free(comp.source)
            gc.collect()
        # 5. Sizes (the denoiser): which latent sizes the graph really supports; then the check (a marked
        # UNet: of the graph a ControlNet runs, its residual inputs added back as at load).
        checked = path
        if marked:
            checked = self.tmp / ".checks" / component / path.name
            checked.parent.mkdir(parents=True)
            residual_graph.add_inputs(path, checked, comp, component_precision)
        if probe_cases is not None:
            size_rule = self.geometry.probe_rule(probe_cases, checked, precision=component_precision,
                                                 model=traced_spec)
        result = check.judge_cases(comp, checked, cases, precision=component_precision)
        del cases, probe_cases
        if marked:
            shutil.rmtree(self.tmp / ".checks")
        data = path.with_name(path.name + ".data")
        entry = {
            "file": f"{component}/model.onnx",
            "external_data": data.exists(),
            "precision": component_precision,
            "sha256": component_sha256([path, data]),
            "bytes": component_bytes([path, data]),
            "precision_note": note,
            "export_seconds": round(exported_s, 1),
            "check": {**result, "seconds": time.perf_counter() - started},
        }
        if mapped:
            entry["weight_map"] = mapped  # for LoRA at run time (sdrt.runtime.lora)
        return entry, size_rule


    def _marked(self, comp: spec.ComponentSpec) -> bool:
        """Traced with ControlNet residual inputs, stored without them (sdrt.residual_graph)."""
        return self.residuals is not None and comp.name == self.model_spec.family.denoiser


def vocab_size_of(module: Any) -> int:
    """A text encoder's vocabulary size (each draws its own ids); 1 for a module without one."""
    config = module.config
    value = config.get("vocab_size") if isinstance(config, dict) else getattr(config, "vocab_size", None)
    return int(value or 1)


def denoiser_sizes(src: source.Source, name: str, sample_size: int) -> Any:
    """The size rule of the family's denoiser `name`: the UNet's (sdrt.export.sizes; the module, loaded
    anyway), Flux's packed tokens (sdrt.export.flux) or a patch transformer's (SD3:
    sdrt.export.sizes_transformer): a transformer's from its config, its weights loaded in its turn."""
    config = src.config(name)
    if src.family.name == "flux":
        from sdrt.export.flux import FluxSizes

        return FluxSizes(config, sample_size)
    if sizes_transformer.is_transformer(config):
        return sizes_transformer.TransformerSizes(config, sample_size)
    return sizes.UNetSizes(src.module(name), sample_size)


def precision_policy(component: spec.ComponentSpec, precision: str, module: Any) -> tuple[str, str]:
    """(precision, why) of one component under --precision.

    SD VAEs overflow in fp16 (NaN/inf images at 512 px and up); diffusers marks them
    `force_upcast: true` and runs them in fp32 even in fp16 pipelines. The spec names that key
    (`fp32_if_config`) for both halves of the VAE, and we do the same."""
    if precision == "fp32":
        return "fp32", "fp32 as asked (--precision fp32)"
    if component.fp32_always:
        return "fp32", component.fp32_always
    key = component.fp32_if_config
    if key and module.config.get(key, False):
        return "fp32", (f"kept fp32 under --precision fp16: the VAE config has {key}=true (SD VAEs overflow "
                        f"in fp16; diffusers runs them in fp32 too)")
    return "fp16", "fp16 as asked (--precision fp16); the check compares it with the fp32 PyTorch module"


#: model symbol -> how to read it from the source's modules (the family's own symbols, sdrt.spec)
SYMBOL_READERS: dict[str, Callable[[source.Source], int]] = {
    "D1": lambda src: int(src.config("text_encoder").hidden_size),
    "K1": lambda src: int(src.config("text_encoder").num_hidden_layers),
    "D2": lambda src: int(src.config("text_encoder_2").hidden_size),
    "K2": lambda src: int(src.config("text_encoder_2").num_hidden_layers),
    "P": lambda src: int(src.config("text_encoder_2").projection_dim),
    "T": lambda src: 5 if src.model_index.get("requires_aesthetics_score", False) else 6,
    "G": lambda src: int(src.config("unet").time_cond_proj_dim),
}


def pipeline_facts(src: source.Source, hidden_states: bool = False) -> dict[str, Any]:
    """What the runtime needs to know about the model, read from its configs (never assumed)."""
    if src.family.name == "sd3":
        from sdrt.export.facts_sd3 import sd3_facts

        return sd3_facts(src)
    if src.family.name == "flux":
        from sdrt.export import flux

        return flux.pipeline_facts(src)
    unet, vae = src.config("unet"), src.config("vae")
    family = src.family
    latent_channels = int(vae.latent_channels)
    encoders = [(name, src.config(name)) for name in family.text_encoders]
    width = sum(int(e.hidden_size) for _, e in encoders)
    names = " + ".join(f"{n}'s {int(e.hidden_size)}" for n, e in encoders)
    if int(unet.cross_attention_dim) != width:
        raise SdrtError(f"the UNet's cross_attention_dim {unet.cross_attention_dim} differs from the text "
                        f"encoders' hidden size ({names}): the pipeline's components do not match")
    if int(unet.out_channels) != latent_channels:
        raise SdrtError(f"the UNet predicts {unet.out_channels} channels but the VAE has {latent_channels} "
                        f"latent channels: the pipeline's components do not match")
    variants = [v for v, on in (("timestep_cond", unet.get("time_cond_proj_dim") is not None),
                                ("hidden_states", hidden_states)) if on and v in family.variants]
    model = spec.model_spec(family.name, variants)
    dims = {symbol: SYMBOL_READERS[symbol](src) for symbol in model.symbols() if symbol in SYMBOL_READERS}
    if family.size_conditioning:
        check_size_conditioning(src, dims)
    index = src.model_index
    residuals = controlnet.residual_layout(src.module("unet")) if family.controlnet else None
    facts = {
        "family": family.name,
        "variants": variants,
        "dims": dims,
        "class_name": src.class_name,
        "prediction_type": src.scheduler_config.get("prediction_type", "epsilon"),
        "scaling_factor": float(vae.scaling_factor),
        "shift_factor": vae.get("shift_factor"),
        "vae_scale_factor": 2 ** (len(vae.block_out_channels) - 1),
        "latent_channels": latent_channels,
        "unet_in_channels": int(unet.in_channels),
        "text_hidden_size": int(unet.cross_attention_dim),
        "token_length": spec.TOKEN_LENGTH,
        "sample_size": int(unet.sample_size),
        "vae_sample_size": vae_sample_size(vae),  # diffusers' VAE tile size (tile_sample_min_size)
        "inpainting": int(unet.in_channels) == 2 * latent_channels + 1,
        # the UNet's ControlNet residuals (sdrt.spec.residuals): what a ControlNet must give to fit it
        **({"residuals": residuals.to_json()} if residuals is not None else {}),
        "vae_decoder_input": "latents already divided by scaling_factor (diffusers' pipeline divides "
                             "before vae.decode)",
        "vae_encoder_output": "raw diagonal-Gaussian parameters (mean, logvar) on channels; multiply "
                              "the sampled latents by scaling_factor",
    }
    if family.size_conditioning:
        # diffusers' SDXL pipelines default both (model_index.json overrides them)
        facts["force_zeros_for_empty_prompt"] = bool(index.get("force_zeros_for_empty_prompt", True))
        facts["requires_aesthetics_score"] = bool(index.get("requires_aesthetics_score", False))
        facts["force_upcast"] = bool(vae.get("force_upcast", False))
    return facts


def vae_sample_size(vae: Any) -> int | None:
    """The VAE's own sample_size (px; the first of a pair), what diffusers' tiled decode tiles by."""
    size = vae.get("sample_size")
    size = size[0] if isinstance(size, (list, tuple)) else size
    return int(size) if size else None


def check_size_conditioning(src: source.Source, dims: dict[str, int]) -> None:
    """An SDXL-family UNet must take text_time conditioning of T time ids and the pooled projection P."""
    unet = src.config("unet")
    if unet.get("addition_embed_type") != "text_time":
        raise SdrtError(f"the UNet's addition_embed_type is {unet.get('addition_embed_type')!r}, an SDXL "
                        f"pipeline needs 'text_time': the pipeline's components do not match")
    time_ids = dims["T"]
    wanted = time_ids * int(unet.addition_time_embed_dim) + dims["P"]
    if int(unet.projection_class_embeddings_input_dim) != wanted:
        raise SdrtError(f"the UNet's projection_class_embeddings_input_dim is "
                        f"{unet.projection_class_embeddings_input_dim}, but {time_ids} time ids x "
                        f"{unet.addition_time_embed_dim} + text_encoder_2's projection_dim {dims['P']} = {wanted}"
                        f" (requires_aesthetics_score={time_ids == 5} in model_index.json): set it to match the UNet")


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
                   "content_hash": src.content_hash,
                   # a single file's preset configs and a swapped VAE (a ControlNet folder's source has neither)
                   **{key: value for key, value in (("config", getattr(src, "config_preset", None)),
                                                    ("vae", getattr(src, "vae", None))) if value}},
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
