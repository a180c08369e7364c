"""Export a component larger than memory: traced without its weights, the weights streamed from the source files.

A folder's module is built on the meta device (no weights) and traced by the dynamo exporter without
its optimizer pass (which would need the values). Each parameter's initializer then takes its values
from the folder's safetensors files, read one tensor at a time when the graph is written, in the dtype
the folder stores them in (fp16 for a released SD3 T5-XXL); where the graph computes in fp32, a Cast
to float follows, so the weights are exactly the fp32 module's (the source module read in fp32 holds
those very values) and only their storage is 16-bit: half the disk, and half the memory on engines that
keep them so. A Transpose of a weight in front of its MatMul is folded into the stored layout.
`ir.save` writes the external data file tensor by tensor.

The check is the ordinary one, made to fit: PyTorch runs the module loaded in its stored dtype with
each layer lifted to fp32 only for its own forward (peak: the stored weights plus one layer in fp32;
the same numbers as the fp32 module), the module is freed, then ONNX Runtime runs the graph with its
weights left in 16 bits (no constant folding of the Casts, no arena: `check.ort_session(lean=True)`).
The weight map is written from what this module placed (names, layouts, byte ranges) and read back.

Each initializer is stored in the dtype the traced graph declares for it: an fp16 graph's weights in
fp16, and a weight it computes in fp32 (Flux's time embedding, sdrt.export.graphs) as the folder stores
it, with a Cast. A transformer denoiser's size probe (the family's geometry: SD3's patches, Flux's
token grids) runs the same lifted module and a lean session; a UNet is never streamed. A component is streamed when its fp32 weights exceed `STREAM_BYTES`, or when its whole
export (about `WHOLE_PEAK` x its fp32 weights) would not fit the memory available; `sdrt export
--stream NAME` asks for one.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from sdrt import spec
from sdrt.errors import SdrtError
from sdrt.export import check, trace
from sdrt.export.graphs import example_inputs, wrap
from sdrt.weight_map import FILE_NAME, FORMAT, VERSION, read_record

#: components whose weights take more than this in fp32 are streamed (T5-XXL: 19 GB; SD3.5 Medium's
#: transformer, 9 GB, and SDXL's UNet, 10 GB, are exported whole)
STREAM_BYTES = 12 * 2**30
#: the whole (not streamed) export of a component peaks at about this many times its fp32 weights (the
#: module, the folded graph and the check; measured: SDXL's 10.3 GB UNet, 19.2 GiB)
WHOLE_PEAK = 2.5
#: safetensors dtype name -> (torch dtype, ONNX data type name)
STORED = {"F32": (torch.float32, "FLOAT"), "F16": (torch.float16, "FLOAT16"), "BF16": (torch.bfloat16, "BFLOAT16")}
SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
NOTE = ("weights stored in {stored} as the source folder has them, computed in {compute}; exported streamed "
        "(traced without weights, each weight copied from the source files: the whole module in fp32 would "
        "take {gib:.1f} GiB of memory)")


def fp32_bytes(module: torch.nn.Module) -> int:
    return 4 * sum(p.numel() for p in module.parameters())


def meta_module(src: Any, name: str, buffers_too: bool = False) -> torch.nn.Module:
    """The folder module `name` with its parameters on the meta device (configs only, no weights).
    `buffers_too`: its buffers as well (a trace must see one device), their init values kept in
    `module.sdrt_buffers` (name -> tensor) for the graph."""
    import diffusers
    import transformers

    from sdrt.export.presets import parameters_on_meta

    library, cls = src.family.modules[name]
    with parameters_on_meta():
        if library == "transformers":
            module = getattr(transformers, cls)(src.config(name))
        else:
            model_class = getattr(diffusers, cls)
            module = model_class.from_config(model_class.load_config(src.path / name))
    module.eval()
    if buffers_too:
        module.sdrt_buffers = {}
        for buffer_name, buffer in list(module.named_buffers()):
            module.sdrt_buffers[buffer_name] = buffer
            owner, _, leaf = buffer_name.rpartition(".")
            module.get_submodule(owner)._buffers[leaf] = buffer.to("meta")
    return module


def streamed_components(src: Any, model_spec: spec.ModelSpec, components: Sequence[str],
                        requested: Sequence[str], available: int | None = None) -> set[str]:
    """The components to stream: those asked for, and those of a folder whose fp32 weights exceed
    STREAM_BYTES, or whose whole export would not fit the memory available (`available`, bytes:
    about WHOLE_PEAK x their fp32 weights; a UNet never: its size probe has no streamed form)."""
    unet = model_spec.family.denoiser == "unet"
    for name in requested:
        if unet and name == "unet":
            raise SdrtError("--stream unet: a UNet cannot be exported streamed (its size probe runs the whole "
                            "module); stream text encoders or VAEs")
        if name in model_spec.component_names and not src.weight_files(model_spec.component(name).source):
            raise SdrtError(f"--stream {name} needs a diffusers folder with safetensors weights: write the preset "
                            f"with `sdrt preset NAME --out DIR` and export DIR")
    chosen = {name for name in requested if name in components}
    for name in components:
        comp = model_spec.component(name)
        if name in chosen or (unet and name == "unet") or not src.weight_files(comp.source):
            continue
        size = fp32_bytes(meta_module(src, comp.source))
        if size > STREAM_BYTES or (available is not None and WHOLE_PEAK * size > available):
            chosen.add(name)
    return chosen


class WeightFiles:
    """The safetensors tensors of one module folder, by key, read one at a time."""

    def __init__(self, files: Sequence[Path]):
        from safetensors import safe_open

        self.where: dict[str, Path] = {}
        self.dtypes: dict[str, str] = {}
        for file in files:
            with safe_open(str(file), "pt") as f:
                for key in f.keys():
                    self.where[key] = file
                    self.dtypes[key] = f.get_slice(key).get_dtype()

    def read(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.where[key]), "pt") as f:
            return f.get_tensor(key)


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _aliases(module: torch.nn.Module) -> dict[str, list[str]]:
    """parameter name -> every name of the same tensor (tied weights: T5's shared / embed_tokens)."""
    groups: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return {name: names for names in groups.values() for name in names}


def _prefix(graph: torch.nn.Module, module: torch.nn.Module) -> str:
    for attribute, child in graph.named_children():
        if child is module:
            return attribute + "."
    raise AssertionError("the wrapper does not hold the module")


def place_weights(model: Any, prefix: str, module: torch.nn.Module, files: WeightFiles) -> dict[str, dict[str, Any]]:
    """Give every parameter initializer of the traced `model` (onnx_ir) its values from `files`, lazily,
    in their stored dtype (a Cast after it to the dtype the graph computes that weight in, where they
    differ: fp32, or fp16 in an fp16 graph, whose fp16 weights are stored so; a Transpose after it folded
    into the stored layout). Returns parameter name -> {initializer, layout, stored dtype, shapes}."""
    import onnx_ir as ir

    aliases = _aliases(module)
    params = dict(module.named_parameters(remove_duplicate=False))
    initial = getattr(module, "sdrt_buffers", {})
    for buffer_name, buffer in initial.items():  # a stored float buffer (SD3's position embedding) as a weight
        if buffer.is_floating_point() and buffer_name in files.where:
            params[buffer_name] = buffer
            aliases.setdefault(buffer_name, [buffer_name])
    for name, value in model.graph.initializers.items():  # the others: their init values, as a whole export has
        own = name[len(prefix):] if name.startswith(prefix) else None
        if own in initial and own not in params:
            value.const_value = ir.Tensor(initial[own].detach().cpu().numpy(), name=name)
    placed: dict[str, dict[str, Any]] = {}
    users: dict[str, list[Any]] = {}
    for node in model.graph:
        for value in node.inputs:
            if value is not None and value.is_initializer():
                users.setdefault(value.name, []).append(node)
    casts = []
    for name, value in list(model.graph.initializers.items()):
        if not name.startswith(prefix) or name[len(prefix):] not in params:
            continue
        param_name = name[len(prefix):]
        key = next((k for k in [param_name, *aliases[param_name]] if k in files.where), None)  # own name first
        if key is None:
            raise SdrtError(f"{prefix.rstrip('.')}: parameter {param_name} is in none of the source's safetensors "
                            f"files: the folder is incomplete")
        stored, onnx_type = STORED.get(files.dtypes[key], (None, None))
        if stored is None:
            raise SdrtError(f"{param_name} is stored as {files.dtypes[key]}: sdrt streams fp32, fp16 and bf16 weights")
        # what the graph computes this weight in: the precision's, or fp32 where an fp16 graph keeps a
        # module in fp32 (Flux's time embedding, sdrt.export.graphs)
        compute = torch.float16 if value.dtype == ir.DataType.FLOAT16 else torch.float32
        if compute == torch.float16 and stored != torch.float16:
            stored, onnx_type = torch.float16, "FLOAT16"  # an fp16 graph: its weights in fp16 (the check judges it)
        shape = tuple(params[param_name].shape)
        transpose = None
        consumers = users.get(name, [])
        if (len(shape) == 2 and len(consumers) == 1 and consumers[0].op_type == "Transpose"
                and list(consumers[0].attributes.get_ints("perm", [1, 0])) == [1, 0]):
            transpose = consumers[0]
        stored_shape = shape[::-1] if transpose is not None else shape

        def load(key: str = key, stored: torch.dtype = stored, flip: bool = transpose is not None) -> Any:
            tensor = files.read(key).to(stored)
            tensor = tensor.t().contiguous() if flip else tensor
            return ir.Tensor(_as_numpy(tensor))

        value.const_value = ir.LazyTensor(load, dtype=getattr(ir.DataType, onnx_type), shape=ir.Shape(stored_shape),
                                          name=name)
        value.dtype = getattr(ir.DataType, onnx_type)
        value.shape = ir.Shape(stored_shape)
        if transpose is not None:  # the stored layout is already transposed: the node goes
            produced = transpose.outputs[0]
            ir.convenience.replace_all_uses_with(produced, value)
            model.graph.remove(transpose, safe=True)
        if stored != compute:
            target = ir.DataType.FLOAT if compute == torch.float32 else ir.DataType.FLOAT16
            users_before = list(value.consumers())
            cast = ir.node("Cast", [value], attributes={"to": target}, name=f"{name}/cast")
            cast.outputs[0].name, cast.outputs[0].dtype = f"{name}/{target.name.lower()}", target
            cast.outputs[0].shape = ir.Shape(stored_shape)
            for node in users_before:
                for i, given in enumerate(node.inputs):
                    if given is value:
                        node.replace_input_with(i, cast.outputs[0])
            casts.append(cast)
        placed[param_name] = {"initializer": name, "layout": "transpose" if transpose is not None else "identity",
                              "dtype": str(stored).removeprefix("torch."), "shape": list(stored_shape),
                              "parameter_shape": list(shape), "key": key}
    if casts:  # they read initializers only: first in the graph
        model.graph.insert_before(next(iter(model.graph)), casts)
    return placed


def write_weight_map(path: Path, placed: Mapping[str, Mapping[str, Any]], module: torch.nn.Module,
                     files: WeightFiles, prefix: str) -> str | None:
    """The weight map of a streamed graph (sdrt.weight_map's format), every record read back and compared
    with the source tensor; None where a weight is stored as bf16 (the lean runtime reads no bf16)."""
    import onnx

    from sdrt.export.weight_map import _locations

    if any(record["dtype"] == "bfloat16" for record in placed.values()):
        return None
    where = _locations(onnx.load(str(path), load_external_data=False), path)
    parameters = {}
    for name, record in placed.items():
        entry = {k: v for k, v in record.items() if k != "key"}
        parameters[name] = [{**entry, **where[record["initializer"]]}]
    unused = {name: list(p.shape) for name, p in module.named_parameters() if name not in placed}
    data = {"format": FORMAT, "version": VERSION, "prefix": prefix, "parameters": parameters, "unused": unused,
            "unmapped": []}
    for name, records in parameters.items():
        expected = files.read(placed[name]["key"]).to(getattr(torch, placed[name]["dtype"]))
        expected = expected.t() if records[0]["layout"] == "transpose" else expected
        if not np.array_equal(read_record(path.parent, records[0]), expected.contiguous().numpy()):
            raise SdrtError(f"weight map: initializer {records[0]['initializer']} read back differs from {name}: "
                            f"report it")
    (path.parent / FILE_NAME).write_text(json.dumps(data, indent=1) + "\n")
    return f"{path.parent.name}/{FILE_NAME}"


def _tensors(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    found = {n: p for n, p in layer._parameters.items() if p is not None}
    found.update({n: b for n, b in layer._buffers.items() if b is not None and b.is_floating_point()})
    return found


class LiftToFloat:
    """Forward hooks that run each layer of a 16-bit module in fp32 (its weights and float buffers lifted
    for its own forward) and put them back after: the fp32 module's numbers, one layer in fp32 at a time.
    With ``dtype=torch.float64`` the same in float64, each layer's float inputs cast too (a module may cast
    its activations to a child's weight dtype before that child is lifted): the check's exact answer."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.handles = []
        for layer in module.modules():
            if _tensors(layer):
                self.handles.append(layer.register_forward_pre_hook(self._lift, with_kwargs=True))
                self.handles.append(layer.register_forward_hook(self._lower))
        self.saved: dict[int, dict[str, torch.dtype]] = {}

    def _lift(self, layer: torch.nn.Module, args: Any, kwargs: Any) -> Any:
        tensors = _tensors(layer)
        self.saved[id(layer)] = {n: t.dtype for n, t in tensors.items()}
        for t in tensors.values():
            t.data = t.data.to(self.dtype)
        if self.dtype != torch.float64:
            return None

        def cast(value: Any) -> Any:
            return value.to(self.dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    def _lower(self, layer: torch.nn.Module, args: Any, output: Any) -> None:
        tensors = _tensors(layer)
        for n, dtype in self.saved.pop(id(layer)).items():
            tensors[n].data = tensors[n].data.to(dtype)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def export_component(src: Any, comp: spec.ComponentSpec, model_spec: spec.ModelSpec, path: Path, *,
                     trace_dims: Mapping[str, int], values: Mapping[str, int], size_rule: Mapping[str, Any],
                     opset: int, precision: str, note: str, geometry: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Trace, write, map and check one streamed component: (its manifest entry, the probed size rule of a
    transformer denoiser, else None; `geometry`: the denoiser's size rule, sdrt.export.exporter.denoiser_sizes)."""
    from sdrt.export.source import load_module

    started = time.perf_counter()
    path.parent.mkdir(exist_ok=True)
    module = meta_module(src, comp.source, buffers_too=True)
    compute = torch.float16 if precision == "fp16" else torch.float32
    module = module.half() if compute == torch.float16 else module
    gib = fp32_bytes(module) / 2**30
    vocab_size = int(getattr(src.config(comp.source), "vocab_size", None) or src.vocab_size)
    example = {name: value.to("meta")  # one device for the trace: the module's weights are on meta
               for name, value in example_inputs(comp, trace_dims, vocab_size=vocab_size, seed=0, dtype=compute).items()}
    graph = wrap(comp, module, model_spec)
    program = trace.dynamo_program(graph, comp, example, opset=opset, optimize=False)
    files = WeightFiles(src.weight_files(comp.source))
    prefix = _prefix(graph, module)
    placed = place_weights(program.model, prefix, module, files)
    import onnx_ir as ir

    ir.save(program.model, path, external_data=path.name + ".data")
    del program, graph
    config = module.config
    config.save_pretrained(path.parent) if hasattr(config, "save_pretrained") else module.save_config(path.parent)
    trace.name_axes(path, comp, precision)
    mapped = (write_weight_map(path, placed, module, files, prefix)
              if comp.name in model_spec.family.lora_components else None)
    stored = sorted({record["dtype"] for record in placed.values()})
    exported_s = time.perf_counter() - started
    del module
    gc.collect()

    started = time.perf_counter()  # the check: PyTorch first (16-bit module, each layer lifted to fp32), freed
    lowest = min((getattr(torch, d) for d in stored), key=lambda d: torch.finfo(d).bits)
    reference = load_module(src.path, src.family, comp.source, dtype=lowest)
    fresh = dict(meta_module(src, comp.source).named_buffers())
    for name, buffer in list(reference.named_buffers()):  # float buffers as the graph has them: the file's own
        if buffer.is_floating_point() and (name in files.where or name in fresh):  # dtype, else the init values
            owner, _, leaf = name.rpartition(".")
            reference.get_submodule(owner)._buffers[leaf] = files.read(name) if name in files.where else fresh[name]
    lift = LiftToFloat(reference) if lowest != torch.float32 else None  # the fp32 module's numbers
    shapes = check.check_dims(comp, trace_dims, size_rule)
    cases = check.reference_cases(comp, reference, values, shapes, precision=precision, vocab_size=vocab_size,
                                  model=model_spec)
    probe = None
    if comp.name == model_spec.family.denoiser:  # the size probe, with the same lifted module
        probe = geometry.probe_cases(reference, values, precision=precision, vocab_size=vocab_size, model=model_spec)
    if lift is not None and precision == "fp32":  # the float64 answer too: deep random models amplify rounding
        lift.remove()
        lift = LiftToFloat(reference, torch.float64)
        exact = check.reference_cases(comp, reference, values, shapes, precision=precision, vocab_size=vocab_size,
                                      model=model_spec)
        for case, answer in zip(cases, exact):
            case.exact = answer.want
        if probe is not None:
            exact_probe = geometry.probe_cases(reference, values, precision=precision, vocab_size=vocab_size,
                                               model=model_spec)
            for pair, case in probe.items():
                if case is not None and exact_probe.get(pair) is not None:
                    case.exact = exact_probe[pair].want
    if lift is not None:
        lift.remove()
    del reference
    src.free(comp.source)
    gc.collect()
    rule = None if probe is None else geometry.probe_rule(probe, path, precision=precision, model=model_spec,
                                                          lean=True)
    result = check.judge_cases(comp, path, cases, precision=precision, lean=True)
    from sdrt.manifest_schema import component_bytes, component_sha256

    data = path.with_name(path.name + ".data")
    entry = {"file": f"{comp.name}/model.onnx", "external_data": data.exists(), "precision": precision,
             "storage": "/".join(SHORT[d] for d in stored),
             "sha256": component_sha256([path, data]), "bytes": component_bytes([path, data]),
             "precision_note": NOTE.format(stored=" and ".join(stored), compute=str(compute).removeprefix("torch."),
                                           gib=gib) + (f"; {note}" if note else ""),
             "export_seconds": round(exported_s, 1), "check": {**result, "seconds": time.perf_counter() - started}}
    if mapped:
        entry["weight_map"] = mapped
    return entry, rule
