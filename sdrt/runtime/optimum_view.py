"""Optimum ONNX folders (`optimum-cli export onnx --task text-to-image`), read as they are: no sdrt.json needed.

Optimum writes the tensor names sdrt's spec uses (`input_ids` -> `last_hidden_state`, `pooler_output`;
`sample`, `timestep`, `encoder_hidden_states` -> `out_sample`; `latent_sample` -> `sample`; `sample` ->
`latent_parameters`), with three differences the view bridges: int64 token ids (sdrt feeds int32: a
Cast is put in front), a scalar `timestep` (sdrt feeds one per row: the first is taken) and, for SDXL's
text encoders, one `hidden_states.i` output per layer (sdrt's graphs give the stack the UNet reads:
`hidden_states` [K, B, S, D], the penultimate layer first). The view is an sdrt model folder written
once under the Optimum folder's `engines/sdrt-view/` (deletable, like every engine cache; rebuilt when a
file of the folder changes): the adapted graphs (weights hard-linked, never copied where the file
system allows), `tokenizer.json` built from Optimum's vocab.json and merges.txt, and an `sdrt.json`
inferred from the folder's configs and graphs, with what had to be assumed recorded in
`pipeline.assumed`:

- the sizes: nothing was probed, so images are multiples of 2**(UNet blocks - 1) latents, i.e. 8 x f
  pixels for SD (64 px), up to 4 x the model's size (`sizes.rule` says so);
- no export check ran (`components.<name>.check` is absent): the graphs are Optimum's, checked by it;
- the text length: the UNet's token axis is whatever the graph declares (dynamic in Optimum's
  exports: long prompts run);
- the family, from model_index.json's class and the modules it lists, as for a diffusers folder.

Reading a view needs the `onnx` package (the graphs are adapted with it): one line when it is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from sdrt import atomic, spec
from sdrt.errors import SdrtError
from sdrt.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, engines_dir, write_manifest
from sdrt.manifest_schema import component_bytes, component_files, component_sha256

VIEW = "sdrt-view"
#: the upper bound of an unprobed size rule, as sdrt's export uses (sdrt.export.sizes.MAX_LATENT_CAP)
MAX_LATENT_CAP = 256
ONNX_FLOAT16 = 10


def is_optimum_folder(folder: str | os.PathLike) -> bool:
    path = Path(folder)
    return (not (path / MANIFEST_NAME).is_file() and (path / "model_index.json").is_file()
            and (path / "unet" / "model.onnx").is_file())


def _fingerprint(folder: Path) -> str:
    """What the view was made from: every file's path, size and modification time (not the engines)."""
    digest = hashlib.sha256(b"sdrt-optimum-view-1")
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and "engines" not in p.relative_to(folder).parts):
        stat = file.stat()
        digest.update(f"{file.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def view_of(folder: str | os.PathLike) -> Path:
    """The sdrt view of an Optimum folder, made on first use (and again after the folder changed)."""
    folder = Path(folder).resolve()
    out = engines_dir(folder) / VIEW
    key = _fingerprint(folder)
    if (out / MANIFEST_NAME).is_file() and json.loads((out / MANIFEST_NAME).read_text()).get(
            "source", {}).get("fingerprint") == key:
        return out
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise SdrtError(f"{folder} is an Optimum ONNX folder: reading one adapts its graphs with the onnx package: "
                        f"pip install onnx (or export the model with sdrt export)") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.staged_folder(out, if_exists="replace") as tmp:
        _write_view(folder, tmp, key)
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SdrtError(f"{path} is missing or not JSON ({e}): not a complete Optimum ONNX folder") from None


def _write_view(folder: Path, out: Path, key: str) -> None:
    index = _read(folder / "model_index.json")
    family = spec.family_of_pipeline(str(index.get("_class_name")), index)
    if family is None or family.name not in ("sd", "sdxl", "sdxl-refiner"):
        raise SdrtError(f"{folder}: an Optimum folder of a {index.get('_class_name')} is not read by sdrt (it reads "
                        f"SD 1.x/2.x and SDXL ones): export the diffusers model with sdrt export")
    unet = _read(folder / "unet" / "config.json")
    vae = _read(folder / "vae_decoder" / "config.json")
    encoders = {name: _read(folder / name / "config.json") for name in family.text_encoders}
    variants = ["timestep_cond"] if unet.get("time_cond_proj_dim") else []
    model = spec.model_spec(family.name, variants)
    dims = _dims(model, encoders, unet, index)
    components: dict[str, Any] = {}
    for comp in model.components:
        if (folder / comp.name / "model.onnx").is_file():
            components[comp.name] = _adapt(folder / comp.name, out / comp.name, comp, dims)
    for name in ("unet", "vae_decoder", *family.text_encoders):
        if name not in components:
            raise SdrtError(f"{folder} has no {name}/model.onnx: not a complete Optimum ONNX folder")
    for tokenizer, _ in family.text_encoders.values():
        write_tokenizer(folder / tokenizer, out / tokenizer)
    (out / "scheduler").mkdir()
    shutil.copy(folder / "scheduler" / "scheduler_config.json", out / "scheduler" / "scheduler_config.json")
    shutil.copy(folder / "model_index.json", out / "model_index.json")
    write_manifest(out, _manifest(folder, key, index, family, variants, dims, unet, vae, components))


def _dims(model: spec.ModelSpec, encoders: dict[str, dict], unet: dict, index: dict) -> dict[str, int]:
    read = {"D1": lambda: encoders["text_encoder"]["hidden_size"], "K1": lambda: encoders["text_encoder"]["num_hidden_layers"],
            "D2": lambda: encoders["text_encoder_2"]["hidden_size"],
            "K2": lambda: encoders["text_encoder_2"]["num_hidden_layers"],
            "P": lambda: encoders["text_encoder_2"]["projection_dim"],
            "T": lambda: 5 if index.get("requires_aesthetics_score") else 6, "G": lambda: unet["time_cond_proj_dim"]}
    return {s: int(read[s]()) for s in model.symbols() if s in read}


def _adapt(source: Path, out: Path, comp: spec.ComponentSpec, dims: dict[str, int]) -> dict[str, Any]:
    """The component's graph with sdrt's I/O (see the module docstring); weights linked, not copied."""
    import onnx
    from onnx import helper

    model = onnx.load(str(source / "model.onnx"), load_external_data=False)
    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    precision = "fp32"
    ids = inputs.get(spec.N.INPUT_IDS)
    if ids is not None and ids.type.tensor_type.elem_type != onnx.TensorProto.INT32:
        _retarget_input(graph, ids, "sdrt_input_ids_int64",
                        helper.make_node("Cast", [spec.N.INPUT_IDS], ["sdrt_input_ids_int64"], to=onnx.TensorProto.INT64),
                        onnx.TensorProto.INT32, ["B", "S"])
    timestep = inputs.get(spec.N.TIMESTEP)
    if timestep is not None and len(timestep.type.tensor_type.shape.dim) == 0:
        graph.initializer.append(onnx.numpy_helper.from_array(__import__("numpy").array(0, dtype="int64"),
                                                              "sdrt_first_row"))
        _retarget_input(graph, timestep, "sdrt_timestep_scalar",
                        helper.make_node("Gather", [spec.N.TIMESTEP, "sdrt_first_row"], ["sdrt_timestep_scalar"], axis=0),
                        timestep.type.tensor_type.elem_type, ["B"])
    sample = inputs.get(spec.N.SAMPLE) or inputs.get(spec.N.LATENT_SAMPLE)
    if sample is not None and sample.type.tensor_type.elem_type == ONNX_FLOAT16:
        precision = "fp16"
    wanted = [t.name for t in comp.outputs]
    outputs = {o.name: o for o in graph.output}
    if spec.N.HIDDEN_STATES in wanted and spec.N.HIDDEN_STATES not in outputs:
        layers = sorted((o for o in outputs if o.startswith("hidden_states.")), key=lambda n: int(n.split(".")[1]))
        k = dims["K1" if comp.name == "text_encoder" else "K2"]
        if len(layers) < k:
            raise SdrtError(f"{source}/model.onnx gives {len(layers)} hidden_states outputs, {k} layers are needed: "
                            f"export it with Optimum's text-to-image task")
        chosen = list(reversed(layers[:k]))  # the penultimate layer first, as sdrt's stack
        for name in chosen:
            graph.node.append(helper.make_node("Unsqueeze", [name, "sdrt_axis0"], [f"sdrt_{name}_stacked"]))
        graph.initializer.append(onnx.numpy_helper.from_array(__import__("numpy").array([0], dtype="int64"),
                                                              "sdrt_axis0"))
        graph.node.append(helper.make_node("Concat", [f"sdrt_{n}_stacked" for n in chosen], [spec.N.HIDDEN_STATES],
                                           axis=0))
        elem = outputs[layers[0]].type.tensor_type.elem_type
        outputs[spec.N.HIDDEN_STATES] = helper.make_tensor_value_info(spec.N.HIDDEN_STATES, elem, None)
    kept = [outputs[name] for name in wanted if name in outputs]
    del graph.output[:]
    graph.output.extend(kept)
    out.mkdir(parents=True)
    data_files = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
    for location in data_files:  # Optimum's model.onnx_data -> sdrt's model.onnx.data, linked
        _link(source / location, out / "model.onnx.data")
    for tensor in graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "model.onnx.data"
    if len(data_files) > 1:
        raise SdrtError(f"{source}/model.onnx keeps its weights in {len(data_files)} files: sdrt reads one")
    onnx.save(model, str(out / "model.onnx"))
    shutil.copy(source / "config.json", out / "config.json")
    files = component_files(out / "model.onnx")
    return {"file": f"{comp.name}/model.onnx", "external_data": bool(data_files), "precision": precision,
            "precision_note": "as Optimum exported it", "sha256": component_sha256(files), "bytes": component_bytes(files)}


def _retarget_input(graph: Any, value: Any, internal: str, node: Any, elem_type: int, shape: list[str]) -> None:
    """Rename the graph's uses of input `value` to `internal`, computed by `node` from a new input of the
    same name with sdrt's type and shape."""
    from onnx import helper

    name = value.name
    for other in graph.node:
        for i, used in enumerate(other.input):
            if used == name:
                other.input[i] = internal
    for i, output in enumerate(graph.output):
        if output.name == name:
            raise SdrtError(f"an Optimum graph passes {name} straight through: not a graph sdrt reads")
    graph.node.insert(0, node)
    replacement = helper.make_tensor_value_info(name, elem_type, shape)
    index = [i.name for i in graph.input].index(name)
    graph.input.remove(value)
    graph.input.insert(index, replacement)


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system: a copy
        shutil.copy(source, target)


def write_tokenizer(source: Path, out: Path) -> None:
    """`tokenizer.json` (what the runtime reads) from a CLIP tokenizer's vocab.json and merges.txt."""
    out.mkdir(parents=True)
    for name in ("tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    if (source / "tokenizer.json").is_file():
        shutil.copy(source / "tokenizer.json", out / "tokenizer.json")
        return
    vocab = _read(source / "vocab.json")
    lines = (source / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [line.split() for line in lines if line and not line.startswith("#version")]
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    if bos not in vocab or eos not in vocab:
        raise SdrtError(f"{source}/vocab.json has no {bos} / {eos}: not a CLIP tokenizer")
    special = [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True} for t in (bos, eos)]
    split = ("<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+")
    data = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}, {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Removed", "invert": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": {"type": "RobertaProcessing", "sep": [eos, vocab[eos]], "cls": [bos, vocab[bos]],
                           "trim_offsets": False, "add_prefix_space": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": eos, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "</w>", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))


def _manifest(folder: Path, key: str, index: dict, family: spec.Family, variants: list[str], dims: dict[str, int],
              unet: dict, vae: dict, components: dict[str, Any]) -> dict[str, Any]:
    from sdrt import __version__

    blocks = len(unet["block_out_channels"])
    multiple = 2 ** (blocks - 1)
    sample = int(unet["sample_size"] if not isinstance(unet["sample_size"], list) else unet["sample_size"][0])
    max_latent = max(MAX_LATENT_CAP, 4 * sample) // multiple * multiple
    latent_channels = int(vae.get("latent_channels", 4))
    scheduler = _read(folder / "scheduler" / "scheduler_config.json")
    vae_size = vae.get("sample_size")
    pipeline = {
        "family": family.name, "variants": variants, "dims": dims, "class_name": index["_class_name"],
        "prediction_type": scheduler.get("prediction_type", "epsilon"),
        "scaling_factor": float(vae.get("scaling_factor", 0.18215)), "shift_factor": vae.get("shift_factor"),
        "vae_scale_factor": 2 ** (len(vae["block_out_channels"]) - 1), "latent_channels": latent_channels,
        "unet_in_channels": int(unet.get("in_channels", 4)), "text_hidden_size": int(unet["cross_attention_dim"]),
        "token_length": spec.TOKEN_LENGTH, "sample_size": sample,
        "vae_sample_size": int(vae_size[0] if isinstance(vae_size, list) else vae_size) if vae_size else None,
        "inpainting": int(unet.get("in_channels", 4)) == 2 * latent_channels + 1,
        "long_prompts": True,
        "assumed": ["sizes: not probed; multiples of 2**(UNet blocks - 1) latents up to 4x the model's size",
                    "no export check ran: the graphs are Optimum's",
                    "the UNet's token axis is taken as dynamic (long prompts)"],
    }
    if family.size_conditioning:
        pipeline["force_zeros_for_empty_prompt"] = bool(index.get("force_zeros_for_empty_prompt", True))
        pipeline["requires_aesthetics_score"] = bool(index.get("requires_aesthetics_score", False))
        pipeline["force_upcast"] = bool(vae.get("force_upcast", False))
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "sdrt_version": __version__, "created": None,
        "source": {"kind": "optimum", "name": folder.name, "path": str(folder), "content_hash": None,
                   "fingerprint": key},
        "exporter": {"method": "optimum"},
        "pipeline": pipeline,
        "sizes": {"latent_multiple": multiple, "min_latent": multiple, "max_latent": max_latent,
                  "rule": f"an Optimum folder, sizes not probed: multiples of 2**{blocks - 1} = {multiple} latents "
                          f"(the UNet's downsampling), up to {max_latent}", "probed": []},
        "components": components,
    }
