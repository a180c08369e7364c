"""Probes: small, reusable measurements behind a design decision, each runnable on its own and on the
tiny preset in seconds (tests/bench/test_probes.py runs every one). Their logs from real runs stay in
the results folder that cites them.

    python -m sdrt.bench.probes.lora_ready_graph MODEL_DIR     ort-cpu LoRA session: LoRA-ready graph vs full path
    python -m sdrt.bench.probes.switch_breakdown MODEL_DIR     where a LoRA switch's time goes (cProfile)
    python -m sdrt.bench.probes.ort_override_copy              does ONNX Runtime copy initializer overrides?
    python -m sdrt.bench.probes.scratch_page_fault             writing a fresh file mapping: page faults vs MAP_POPULATE
    python -m sdrt.bench.probes.trt_rtx MODEL_DIR OUT.json     what TensorRT-RTX says on this GPU, verbatim
"""
