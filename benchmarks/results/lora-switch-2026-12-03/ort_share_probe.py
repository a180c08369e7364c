"""ort-cpu LoRA session from the LoRA-ready graph: overrides copied by ONNX Runtime or shared with it.

    python ort_share_probe.py MODEL_DIR

The UNet's merged weights (a random rank-32 kohya LoRA, benchmarks/lora_switch.py's) are written
into a scratch file as a switch does; then two sessions on the LoRA-ready graph, each in turn:
(copy) the overrides given with `add_external_initializers` (ONNX Runtime copies them), (share)
all given with `add_initializer` (ONNX Runtime uses the caller's buffer), (share, no pre-packing) the
same with `session.disable_prepacking` (MatMul reads the caller's buffer every call). Printed per variant:
session creation time, RssAnon rise, 3 UNet calls at a 32x32 latent, batch 2; and the max |diff|
of their outputs.
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lora_switch import random_kohya  # noqa: E402
from lora_ready_graph_probe import feeds  # noqa: E402

from sdrt.bench.memory import anon_mb, release_memory  # noqa: E402
from sdrt.engines.ort import OrtCpuBackend, OrtEngine, _import_ort  # noqa: E402
from sdrt.manifest import Manifest  # noqa: E402
from sdrt.runtime.lora.adapters import Adapters  # noqa: E402
from sdrt.runtime.lora.merge import merged_shapes, merged_weights  # noqa: E402
from sdrt.runtime.lora.scratch import store_for  # noqa: E402


def main():
    folder = Path(sys.argv[1])
    lora = Path("/tmp/ort_share_probe_a.safetensors")
    random_kohya(folder, lora, 32, 1)
    manifest = Manifest.load(folder)
    adapters = Adapters(manifest)
    _, placed, maps = adapters.prepare([(lora, 0.8)])
    placed = [p for p in placed if p.layer.component == "unet"]
    store = store_for(merged_shapes(placed, maps)["unet"], folder)
    arrays = merged_weights(placed, maps, lambda c, n, s, d: store.array(s, d))["unet"]
    ort = _import_ort()
    backend = OrtCpuBackend()
    path = manifest.onnx_path("unet")
    from sdrt.engines.ort_tuning import rewritten_model

    path = rewritten_model(path, backend.graph_rewrites, folder / "engines" / backend.name)
    graph, _, outside = backend._lora_graph(manifest, "unet", path, set(arrays))
    outputs = {}
    for variant in ("copy", "share", "share, no pre-packing"):
        release_memory()
        before = anon_mb()
        values = {n: ort.OrtValue.ortvalue_from_numpy(a, "cpu", 0) for n, a in arrays.items()}
        so = backend.session_options()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if variant.endswith("no pre-packing"):
            so.add_session_config_entry("session.disable_prepacking", "1")
        start = time.perf_counter()
        backend._override(so, values, outside if variant == "copy" else frozenset())
        session = backend._session(graph, so, "unet")
        seconds = time.perf_counter() - start
        rise = anon_mb() - before
        engine = OrtEngine(session, "unet", manifest.values, manifest.precision("unet"),
                           component_spec=manifest.spec.component("unet"))
        inputs = feeds(engine)
        outputs[variant] = {k: v.copy() for k, v in engine.run(inputs).items()}
        calls = []
        for _ in range(3):
            t = time.perf_counter()
            engine.run(inputs)
            calls.append(time.perf_counter() - t)
        print(f"{variant}: session {seconds:.2f} s, RssAnon +{rise:.0f} MiB, UNet call "
              f"{', '.join(f'{c:.2f}' for c in calls)} s", flush=True)
        engine.close()
        del engine, session, values, so
    for name in outputs["copy"]:
        for other in ("share", "share, no pre-packing"):
            print(f"{name}: max |copy - {other}| = {np.abs(outputs['copy'][name] - outputs[other][name]).max():.3g}")


if __name__ == "__main__":
    main()
