"""What `sdrt demo` leaves a newcomer to try next: sample inputs and the exact commands that use them.

`sample.png` is the demo's own sdrt image (a start image for img2img) and `mask.png` the same size,
a centred white square (repaint) on black (keep). The commands are printed ready to paste: they name
the folder the demo wrote and call sdrt the way the demo was called (`sdrt`, `.venv/bin/sdrt`, or
`python -m sdrt.cli`), and tests/runtime/test_demo.py runs every one of them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np

SAMPLE, MASK = "sample.png", "mask.png"
#: what the shapes model knows ("a COLOUR SHAPE on a COLOUR background") for each example
SHAPES_PROMPTS = {"txt2img": "a green triangle on a white background",
                  "img2img": "a yellow circle on a blue background",
                  "inpaint": "a white square on a blue background"}
IMG2IMG_STRENGTH = 0.6


def write_sample_inputs(out: Path, image: np.ndarray) -> tuple[Path, Path]:
    """(sample.png, mask.png) in `out`, from a float [H, W, 3] image in [0, 1]."""
    from PIL import Image, ImageDraw

    from sdrt.runtime.images import save_png, to_pil

    height, width = image.shape[:2]
    sample = save_png(to_pil(image[None])[0], out / SAMPLE)
    mask = Image.new("L", (width, height), 0)  # black: keep
    ImageDraw.Draw(mask).rectangle((width // 4, height // 4, width - width // 4 - 1, height - height // 4 - 1),
                                   fill=255)  # white: repaint
    return sample, save_png(mask, out / MASK)


def _shown(path: str | os.PathLike) -> str:
    """A path as short as it stays valid from here: relative when under the current folder (symbolic
    links kept as they are), else as given."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    relative = os.path.relpath(text)
    return text if relative.startswith("..") else relative


def _program(path: str) -> str:
    """An executable's path as a shell word that runs that file (`./x`, never a PATH lookup of `x`)."""
    shown = _shown(path)
    return shlex.quote(shown if os.sep in shown else f".{os.sep}{shown}")


def sdrt_command() -> str:
    """How to call sdrt the way this process was called: `sdrt` when that is what PATH finds, the
    console script's path (`.venv/bin/sdrt` under `make demo`), else `python -m sdrt.cli` with this Python."""
    script = sys.argv[0]
    if Path(script).name == "sdrt":
        found = shutil.which("sdrt")
        if found and os.path.realpath(found) == os.path.realpath(script):
            return "sdrt"
        return _program(script)
    return f"{_program(sys.executable)} -m sdrt.cli"


def commands(out: Path, onnx: Path, prompt: str, steps: int, preset: str) -> list[str]:
    """The shell lines to try next, each runnable as printed (a `#` comment at most)."""
    sdrt = sdrt_command()
    model, sample, mask = (shlex.quote(_shown(p)) for p in (onnx, out / SAMPLE, out / MASK))
    prompts = SHAPES_PROMPTS if preset == "shapes" else dict.fromkeys(SHAPES_PROMPTS, prompt)

    def generate(mode: str, extra: str = "") -> str:
        return (f"{sdrt} generate --model {model} --prompt {shlex.quote(prompts[mode])}{extra} --steps {steps} "
                f"--out {shlex.quote(_shown(out / mode))}")

    return [
        generate("txt2img"),
        generate("img2img", f" --image {sample} --strength {IMG2IMG_STRENGTH}"),
        generate("inpaint", f" --image {sample} --mask {mask}"),
        f"{sdrt} info {model}",
        f"{sdrt} serve --model {model}  # then open http://127.0.0.1:7860/ (Ctrl-C stops it)",
    ]


def python_lines(out: Path, onnx: Path, prompt: str, steps: int) -> list[str]:
    """The first lines of the Python API, as a snippet that runs on its own."""
    return [
        "from sdrt.runtime import Pipeline",
        f"pipe = Pipeline.load({_shown(onnx)!r})",
        f"result = pipe({prompt!r}, num_inference_steps={steps}, seed=0)",
        f"result.images[0].save({_shown(out / 'python.png')!r})",
    ]


def next_steps_text(out: Path, onnx: Path, prompt: str, steps: int, preset: str) -> str:
    shell = commands(out, onnx, prompt, steps, preset)
    python = python_lines(out, onnx, prompt, steps)
    where = "" if os.path.isabs(_shown(out)) else "from this folder; "  # relative paths: run where the demo ran
    return "\n".join([
        f"Next, try ({where}{_shown(out / SAMPLE)} is a start image, {_shown(out / MASK)} an inpainting mask: "
        f"white = repaint, black = keep):",
        *(f"  {line}" for line in shell),
        f"In Python ({_program(sys.executable)}):",
        *(f"  {line}" for line in python),
    ])
