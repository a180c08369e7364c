"""The torch-free peer: OpenVINO GenAI's ``Text2ImagePipeline``, on the same weights as sdrt.

GenAI reads an OpenVINO IR folder in optimum-intel's layout. It is built here from sdrt's own ONNX
export, with the openvino and openvino-tokenizers libraries only (no optimum), once, in a subprocess
(so the benchmark process does not hold the converted graphs), into ``$SDRT_CACHE/bench/genai/``:

    model_index.json, scheduler/    copied from the ONNX folder
    tokenizer/                      openvino_tokenizer.xml / openvino_detokenizer.xml, converted from
                                    the folder's tokenizer.json by openvino_tokenizers
    text_encoder/ unet/ vae_decoder/  openvino_model.xml/.bin from model.onnx, weights kept float32
                                    (``compress_to_fp16=False``), and the diffusers config.json

GenAI feeds token ids and timesteps as int64, and sdrt's graphs take int32 ids and float32
timesteps: a pre-processing step converts them inside the IR (no change to the arithmetic).
The initial latents are the benchmark's own, replayed through a ``Generator`` subclass.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdrt import atomic
from sdrt.bench.results import CallTimes
from sdrt.errors import SdrtError

COMPONENTS = ("text_encoder", "unet", "vae_decoder")
#: GenAI's names for the input types it feeds (tensor -> OpenVINO element type name)
GENAI_INPUT_TYPES = {"text_encoder": {"input_ids": "i64"}, "unet": {"timestep": "i64"}}
IR_FORMAT = 1


def build_ir(onnx_folder: Path, out: Path) -> Path:
    """Write the GenAI IR folder for an sdrt ONNX folder (atomically: temp folder, then rename)."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor
    from openvino_tokenizers import convert_tokenizer
    from transformers import CLIPTokenizerFast

    from sdrt.manifest import Manifest

    manifest = Manifest.load(onnx_folder)
    with atomic.staged_folder(out, if_exists="replace") as tmp:
        shutil.copy2(onnx_folder / "model_index.json", tmp / "model_index.json")
        shutil.copytree(onnx_folder / "scheduler", tmp / "scheduler")
        hf_tokenizer = CLIPTokenizerFast.from_pretrained(str(onnx_folder / "tokenizer"))
        tokenizer, detokenizer = convert_tokenizer(hf_tokenizer, with_detokenizer=True)
        (tmp / "tokenizer").mkdir()
        ov.save_model(tokenizer, str(tmp / "tokenizer" / "openvino_tokenizer.xml"))
        ov.save_model(detokenizer, str(tmp / "tokenizer" / "openvino_detokenizer.xml"))
        for name in ("tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
            if (onnx_folder / "tokenizer" / name).is_file():
                shutil.copy2(onnx_folder / "tokenizer" / name, tmp / "tokenizer" / name)
        for component in COMPONENTS:
            model = ov.Core().read_model(str(manifest.onnx_path(component)))
            wanted = GENAI_INPUT_TYPES.get(component, {})
            if wanted:
                ppp = PrePostProcessor(model)
                for tensor, type_name in wanted.items():
                    ppp.input(tensor).tensor().set_element_type(getattr(ov.Type, type_name))
                model = ppp.build()
            (tmp / component).mkdir()
            ov.save_model(model, str(tmp / component / "openvino_model.xml"), compress_to_fp16=False)
            shutil.copy2(onnx_folder / component / "config.json", tmp / component / "config.json")
            del model
            gc.collect()
        (tmp / "sdrt-genai.json").write_text(json.dumps({"format": IR_FORMAT, "onnx": str(onnx_folder)}) + "\n")
    return out


def ir_folder(onnx_folder: Path) -> Path:
    """The cached IR folder for this export (keyed by its manifest and the library versions)."""
    from importlib import metadata

    from sdrt.bench.models import cache_root

    versions = [metadata.version(d) for d in ("openvino", "openvino-tokenizers")]
    text = (onnx_folder / "sdrt.json").read_bytes() + json.dumps([IR_FORMAT, *versions]).encode()
    out = cache_root() / "bench" / "genai" / f"{onnx_folder.name}-{hashlib.sha256(text).hexdigest()[:12]}"
    if (out / "sdrt-genai.json").is_file():
        return out
    done = subprocess.run([sys.executable, "-m", "sdrt.bench.genai_peer", str(onnx_folder), str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0 or not (out / "sdrt-genai.json").is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SdrtError(f"building the OpenVINO GenAI IR folder from {onnx_folder} failed ({last})")
    return out


def _latent_generator(genai: Any, latents: np.ndarray) -> Any:
    """A GenAI ``Generator`` that hands out ``latents`` (C order), then standard normals."""
    values = np.ascontiguousarray(latents, dtype=np.float32).reshape(-1).tolist()

    class Replay(genai.Generator):
        def __init__(self) -> None:
            genai.Generator.__init__(self)
            self.position = 0
            self.rest = np.random.default_rng(0)

        def next(self) -> float:
            if self.position < len(values):
                self.position += 1
                return values[self.position - 1]
            return float(self.rest.standard_normal())

    return Replay()


@dataclass
class GenaiContender:
    """OpenVINO GenAI ``Text2ImagePipeline`` at one inference precision on the CPU."""

    folder: Path  # sdrt's ONNX folder (the IR is built from it)
    precision_name: str = "f32"
    kind: str = "peer"
    pipe: Any = None
    ir: Path | None = None
    scheme: str | None = None  # the folder is sdrt quantize's (its Q/DQ graphs become the IR's int8 layers)

    @property
    def name(self) -> str:
        if self.scheme:
            return f"OpenVINO GenAI {self.scheme} ({self.precision_name} elsewhere)"
        return f"OpenVINO GenAI {self.precision_name}"

    @property
    def device_backend(self) -> str:
        return "openvino-genai-cpu"

    def precision(self) -> str:
        return self.precision_name

    def prepare(self) -> None:
        self.ir = ir_folder(Path(self.folder))

    def load(self) -> None:
        import openvino_genai

        self.pipe = openvino_genai.Text2ImagePipeline(
            str(self.ir), "CPU", INFERENCE_PRECISION_HINT=self.precision_name, PERFORMANCE_HINT="LATENCY")

    def __call__(self, gen: Any) -> tuple[np.ndarray, CallTimes, dict[str, Any]]:
        import openvino_genai

        if gen.scheduler is not None:
            raise SdrtError("the OpenVINO GenAI peer runs the model's own scheduler only: drop --scheduler")
        start = time.perf_counter()
        tensor = self.pipe.generate(
            gen.prompt, width=gen.width, height=gen.height, num_inference_steps=gen.steps,
            guidance_scale=gen.guidance_scale, num_images_per_prompt=gen.batch,
            generator=_latent_generator(openvino_genai, gen.latents))
        elapsed = time.perf_counter() - start
        images = np.asarray(tensor.data, dtype=np.float32) / 255.0  # uint8 NHWC
        metrics = self.pipe.get_performance_metrics()  # aggregates in ms, raw durations in microseconds
        unet = [float(d) / 1e6 for d in metrics.raw_metrics.unet_inference_durations]
        steps = [float(d) / 1e6 for d in metrics.raw_metrics.iteration_durations]
        times = CallTimes(text_encoder_s=sum(metrics.get_text_encoder_infer_duration().values()) / 1000.0,
                          unet_steps_s=unet, host_steps_s=[max(i - u, 0.0) for i, u in zip(steps, unet)],
                          vae_decode_s=metrics.get_vae_decoder_infer_duration() / 1000.0, end_to_end_s=elapsed)
        return images, times, {}

    def close(self) -> None:
        self.pipe = None
        gc.collect()


if __name__ == "__main__":  # python -m sdrt.bench.genai_peer ONNX_FOLDER OUT
    build_ir(Path(sys.argv[1]), Path(sys.argv[2]))
