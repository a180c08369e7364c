"""The lean runtime: tokenizer, numpy schedulers, the denoising loop, image I/O. Never imports torch.

    from sdrt.runtime import Pipeline
    pipe = Pipeline.load("out/tiny", backend="auto")
    result = pipe("a red bicycle", num_inference_steps=20, seed=1)
    result.images[0].save("bicycle.png"); print(result.timings.as_dict())
"""

from sdrt.runtime.pipeline import Pipeline, PipelineOutput  # noqa: F401  (Pipeline.load: the family's class)
from sdrt.runtime.timing import StageTimings  # noqa: F401

__all__ = ["Pipeline", "PipelineOutput", "StageTimings"]
