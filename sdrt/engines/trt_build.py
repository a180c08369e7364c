"""Build TensorRT engines from the fp16 ONNX with polygraphy, into the engine store.

One component at a time: its profile from the spec (trt_profiles), its key from what it depends on
(trt_cache), an up-to-date entry reused unless forced, otherwise polygraphy parses the ONNX (strongly
typed where the library has it, the FP16 flag where it does not), builds with the optimization level,
workspace limit and persistent timing cache asked for, and the plan is stored atomically. The build
log is kept beside the store, and read to tell an out-of-memory failure from others.

Attention: the exporter writes SDPA as the ONNX `Attention` op, which TensorRT parses into an
attention layer that must run on a fused kernel unless marked decomposable. CLIP's causal, masked
attention has none in TensorRT-RTX 1.7 (the text encoder failed to build: "Myelin ... CHECK
(composite_op->is_decomposable()) failed"), so every attention layer is marked decomposable before
the build: TensorRT still fuses where it has a kernel and decomposes into primitive ops only where it
has none. The export stays as it is (ONNX Runtime runs the same graph); what the build did is
recorded in the engine's key.json ("network": attention layers found and marked).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from sdrt.engines import trt_api, trt_cache, trt_profiles
from sdrt.errors import SdrtError

#: phrases TensorRT and CUDA use when the builder ran out of GPU memory
OOM_PATTERNS = ("out of memory", "outofmemory", "cudaerrormemoryallocation", "requested amount of gpu memory",
                "insufficient memory", "failed to allocate")


@dataclass(frozen=True)
class BuildOptions:
    opt_level: int | None = None      # builder optimization level 0..5 (TensorRT's default: 3)
    workspace_gb: float | None = None  # cap on the builder's workspace pool
    timing_cache: Path | None = None   # None: DIR/engines/<backend>/timing-<library>-<gpu>.cache
    force: bool = False
    refit: bool = False                # refittable weights: LoRA without rebuilding (trt_refit)

    def key_fields(self) -> dict[str, Any]:
        """The options that change the engine (so its key); the timing cache and --force do not."""
        fields: dict[str, Any] = {"opt_level": self.opt_level, "workspace_gb": self.workspace_gb}
        if self.refit:  # only when set: engines built before the option keep their keys
            fields["refit"] = True
        return fields


def default_timing_cache(root: Path, features: trt_api.Features, target: str) -> Path:
    """One timing cache per TensorRT version and GPU: tactics timed elsewhere do not transfer."""
    tag = "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in f"{features.library}-{target}")
    return root / f"timing-{tag}.cache"


def classify_failure(component: str, error: BaseException, log_text: str, rng: trt_profiles.DimRange,
                     log_path: Path | None, refit: bool = False) -> SdrtError:
    """One line for a failed build: out of GPU memory gets the knobs that lower it; a refittable build
    that needed CUDA (measured: TensorRT-RTX 1.7 JIT-compiles a refittable tiny UNet with Myelin and
    fails with `CHECK(status == CUDA_SUCCESS)` on a machine without a GPU) says to build on the GPU."""
    text = f"{error}\n{log_text}".lower()
    if any(p in text for p in OOM_PATTERNS):
        return SdrtError(f"out of GPU memory while building the {component} engine (profile max {rng.max}): "
                         f"lower --max-size / --max-batch, or --workspace-gb")
    if refit and "cuda_success" in text:
        return SdrtError(f"the refittable {component} engine needs a working GPU to build (TensorRT compiled it "
                         f"with CUDA, which failed here): run sdrt build --refit on the GPU that will run it, "
                         f"or build without --refit (LoRA then needs a rebuild)")
    last = next((ln.strip() for ln in reversed(log_text.splitlines()) if "error" in ln.lower()), str(error))
    where = f"; full log: {log_path}" if log_path else ""
    return SdrtError(f"TensorRT could not build the {component} engine: {last[:300]}{where}")


def _import_polygraphy(fl: trt_api.Flavor) -> Any:
    """polygraphy picks tensorrt or tensorrt_rtx once, at import, from POLYGRAPHY_USE_TENSORRT_RTX."""
    os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = fl.polygraphy_env
    loaded = sys.modules.get("polygraphy.config")
    if loaded is not None and bool(loaded.USE_TENSORRT_RTX) != (fl.polygraphy_env == "1"):
        if "polygraphy.backend.trt" in sys.modules:
            raise SdrtError(f"polygraphy is already set up for another TensorRT flavor in this process: "
                            f"build {fl.name} engines in a separate `sdrt build` run")
        loaded.USE_TENSORRT_RTX = fl.polygraphy_env == "1"
    return trt_api.import_module("polygraphy.backend.trt", "polygraphy", "pip install 'sdrt[tensorrt]'")


@dataclass(frozen=True)
class Built:
    """A serialized plan and what the build changed in the parsed network (recorded in key.json)."""

    plan: bytes
    network: dict[str, Any]


def allow_attention_decomposition(trt: Any, network: Any) -> int:
    """Mark every attention of a parsed network decomposable; returns how many there were.

    A TensorRT without attention layers (older than 10.14) has nothing to mark.
    """
    kinds = {getattr(trt.LayerType, name, None): getattr(trt, cls, None)
             for name, cls in (("ATTENTION_INPUT", "IAttentionInputLayer"), ("ATTENTION_OUTPUT", "IAttentionOutputLayer"))}
    kinds.pop(None, None)
    marked: dict[str, Any] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        cls = kinds.get(layer.type)
        if cls is None:
            continue
        layer.__class__ = cls  # get_layer returns the ILayer base; the subclass exposes .attention
        attention = layer.attention
        attention.decomposable = True
        marked[attention.name] = attention
    return len(marked)


def polygraphy_build(trt: Any, onnx_path: Path, shapes: Mapping[str, tuple], net_typing: trt_api.Typing,
                     features: trt_api.Features, options: BuildOptions, timing_cache: Path | None,
                     log_path: Path, rng: trt_profiles.DimRange, component: str) -> Built:
    """Parse, configure and build with polygraphy; returns the serialized plan."""
    pg = _import_polygraphy(trt_api.FLAVORS[features.flavor])
    from polygraphy.logger import G_LOGGER

    profile = pg.Profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.add(name, lo, opt, hi)
    config: dict[str, Any] = {"profiles": [profile]}
    if net_typing.fp16_flag:
        config["fp16"] = True
    if options.opt_level is not None:
        config["builder_optimization_level"] = options.opt_level
    if options.workspace_gb:
        config["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(options.workspace_gb * (1 << 30))}
    if timing_cache is not None:
        config["load_timing_cache"] = str(timing_cache)
    if options.refit:
        config["refittable"] = True
    network_kwargs = {"strongly_typed": True} if net_typing.strongly_typed else {}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    G_LOGGER.log_file = str(log_path)
    try:
        network = pg.network_from_onnx_path(str(onnx_path), **network_kwargs)  # (builder, network, parser)
        attention = allow_attention_decomposition(trt, network[1])
        plan = pg.engine_bytes_from_network(network, config=pg.CreateConfig(**config),
                                            save_timing_cache=str(timing_cache) if timing_cache else None)
    except Exception as e:  # polygraphy raises its own exception; TensorRT's reason is in the log
        G_LOGGER.log_file = None
        log_text = log_path.read_text(errors="replace") if log_path.is_file() else ""
        raise classify_failure(component, e, log_text, rng, log_path, options.refit) from None
    G_LOGGER.log_file = None
    return Built(bytes(plan), {"attention_layers_marked_decomposable": attention})


Builder = Callable[..., "Built | bytes"]


def build_component(manifest: Any, component: str, flavor_name: str, request: trt_profiles.ProfileRequest,
                    options: BuildOptions, *, trt: Any, features: trt_api.Features, target: str,
                    log: Callable[[str], None] = print, builder: Builder | None = None) -> trt_cache.Entry:
    """Build (or find up to date) one component's engine; returns its store entry."""
    builder = builder or polygraphy_build
    onnx_path = manifest.onnx_path(component)
    root = trt_cache.store_root(manifest.folder, flavor_name)
    component_spec = manifest.spec.component(component)
    rng = trt_profiles.dim_range(component_spec, request, manifest.sizes, trt_profiles.default_size(request, manifest))
    onnx_hash = manifest.component_hash(component)
    precision = manifest.precision(component)
    ident = trt_cache.identity(component, onnx_hash, features.library, target, precision)
    key = trt_cache.cache_key(ident, rng, options.key_fields())
    described = trt_profiles.describe(component_spec, rng, manifest.sizes.vae_scale_factor, request.guidance)
    if not options.force:
        for entry in trt_cache.read_entries(root, component):
            if entry.path.name == key and entry.engine_file.is_file():
                log(f"{component}: engine {key} is up to date ({described})")
                return entry
    net_typing = trt_api.network_typing(features, precision)
    timing = None
    if features.timing_cache:
        timing = options.timing_cache or default_timing_cache(root, features, target)
    shapes = trt_profiles.input_shapes(component_spec, manifest.values, rng)
    log(f"{component}: building {trt_api.FLAVORS[flavor_name].label} engine, {precision}, "
        f"{'strongly typed' if net_typing.strongly_typed else 'FP16 flag' if net_typing.fp16_flag else 'fp32'}, "
        f"{described}...")
    start = time.perf_counter()
    built = builder(trt, onnx_path, shapes, net_typing, features, options, timing,
                    root / f"build-{component}.log", rng, component)
    plan, network = (built.plan, built.network) if isinstance(built, Built) else (bytes(built), {})
    seconds = time.perf_counter() - start
    extra = {"built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
             "seconds": round(seconds, 2), "typing": dataclasses.asdict(net_typing),
             "input_shapes": {k: " / ".join("x".join(map(str, s)) for s in v) for k, v in shapes.items()},
             "network": network}
    entry = trt_cache.write_entry(root, key, plan, ident, rng, options.key_fields(), extra)
    log(f"{component}: built in {seconds:.1f} s -> {entry.engine_file} ({len(plan) / 2**20:.1f} MiB)")
    return entry
