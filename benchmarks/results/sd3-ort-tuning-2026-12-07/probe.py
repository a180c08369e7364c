"""One-off probe: the sd3.5-medium transformer step on ort-cpu under the bench's `fast` tuning preset vs
ONNX Runtime's defaults (sdrt generate's), 512x512, CFG (batch 2), 2 steps each, without T5."""
import json, sys, time, platform
from sdrt.engines.ort_tuning import backend_options
from sdrt.runtime.pipeline import Pipeline
folder = sys.argv[1]
rows = []
for preset in ("default", "fast", "default"):
    t = time.perf_counter()
    pipe = Pipeline.load(folder, "ort-cpu", without=["text_encoder_3"], low_memory="off",
                         **backend_options("ort-cpu", preset, folder))
    load = time.perf_counter() - t
    out = pipe("a lighthouse", num_inference_steps=3, guidance_scale=7.0, height=512, width=512, seed=1,
               output_type="latent")
    steps = out.timings.as_dict() if hasattr(out.timings, "as_dict") else vars(out.timings)
    pipe.close()
    rows.append({"preset": preset, "load_s": round(load, 1), "timings": {k: v for k, v in steps.items()
                 if not k.startswith("_")}})
    print(json.dumps(rows[-1], default=str), flush=True)
print(json.dumps({"cpu": platform.processor(), "rows": rows}, default=str))
