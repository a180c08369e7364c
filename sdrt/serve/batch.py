"""`sdrt batch`: many requests from a JSONL file, written as PNGs plus `results.jsonl` beside them, resumably.

One request per line (`prompt`, optional `id`, `negative_prompt`, `width`, `height`, `steps`,
`guidance_scale`, `seed`, `sampler`, `n`); a prompt's `<lora:NAME:SCALE>` tags name files of
--lora-dir, as for `sdrt generate`. A request without a seed gets `--seed + line index`,
so a rerun makes the same images. Each image is written to a temporary name and renamed; a
request's line is appended to `results.jsonl` (flushed and fsynced) only after all its images are
in place. On restart the ids already in `results.jsonl` are skipped: an interrupted run continues
where it stopped and no request is answered twice. A request whose images were written but whose
line was not is simply made again (same seed, same file names, same pixels); a temporary image
that a killed run left half-written is removed before its request is made again.

Test hook: with ``SDRT_BATCH_PAUSE_AFTER=N`` in the environment, a run stops after writing its N-th
result line and waits (saying so on stderr) until it is interrupted or killed, so a test can stop it at
a known point instead of racing it (tests/serve/test_batch.py, tests/serve/test_ray.py).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from sdrt import atomic
from sdrt.errors import SdrtError
from sdrt.serve.queueing import GenerationRequest

RESULTS = "results.jsonl"
PAUSE_AFTER_ENV = "SDRT_BATCH_PAUSE_AFTER"  # the test hook (module docstring)
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
FIELDS = {"id", "prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "sampler", "n",
          "model"}


@dataclass
class BatchItem:
    id: str
    line: int
    request: GenerationRequest


def read_requests(path: str | os.PathLike, *, model: str, default_size: int, default_steps: int,
                  seed_base: int, lora_dir: str | os.PathLike | None = None, flow: bool = False) -> list[BatchItem]:
    """Parse and check every line first: a bad line stops the run before anything is generated.

    `<lora:NAME:SCALE>` tags in a prompt name `lora_dir`/NAME.safetensors, as for `sdrt generate`.
    `flow`: the model is a flow-matching one (SD3): A1111 sampler names map to its samplers (Euler, Heun)."""
    from sdrt.runtime.lora.adapters import prompt_loras
    from sdrt.serve import samplers

    path = Path(path)
    if not path.is_file():
        raise SdrtError(f"{path} does not exist: pass a JSONL file with one request per line")
    items: list[BatchItem] = []
    seen: set[str] = set()
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise SdrtError(f"{where} is not JSON ({e.msg}): write one JSON object per line") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise SdrtError(f"{where} needs a \"prompt\" string")
        unknown = set(obj) - FIELDS
        if unknown:
            raise SdrtError(f"{where} has unknown fields {sorted(unknown)}: use {sorted(FIELDS)}")
        item_id = str(obj.get("id", f"line{number:06d}"))
        if not ID_PATTERN.fullmatch(item_id):
            raise SdrtError(f"{where}: id {item_id!r} must be 1-100 letters, digits, '.', '_' or '-' "
                            f"(it names the image files)")
        if item_id in seen:
            raise SdrtError(f"{where}: id {item_id!r} appears twice: give each request its own id")
        seen.add(item_id)
        sampler = obj.get("sampler")
        if sampler in (samplers.FLOW_SAMPLERS if flow else samplers.SAMPLERS):  # an A1111 name; else an sdrt or
            sampler = samplers.resolve(sampler, flow=flow)                      # diffusers name, the pipeline checks it
        try:
            prompt, loras = prompt_loras(obj["prompt"], lora_dir) if "<lora:" in obj["prompt"] else (obj["prompt"], [])
        except SdrtError as e:
            raise SdrtError(f"{where}: {e}") from None
        try:
            request = GenerationRequest(
                model=model, prompt=prompt, loras=tuple(loras), negative_prompt=str(obj.get("negative_prompt", "")),
                n=int(obj.get("n", 1)), width=int(obj.get("width", default_size)),
                height=int(obj.get("height", default_size)), steps=int(obj.get("steps", default_steps)),
                sampler=sampler,
                guidance_scale=float(obj.get("guidance_scale", 7.5)),
                seed=int(obj.get("seed", seed_base + number - 1)) % 2**32)
        except (TypeError, ValueError) as e:
            raise SdrtError(f"{where}: {e}") from None
        if request.n < 1 or request.steps < 1:
            raise SdrtError(f"{where}: n and steps must be >= 1")
        items.append(BatchItem(item_id, number, request))
    if not items:
        raise SdrtError(f"{path} has no requests")
    return items


def is_flow_folder(folder: str | os.PathLike) -> bool:
    """Whether an exported folder's scheduler is a flow-matching one (SD3): it takes the flow samplers."""
    from sdrt.runtime.schedulers import is_flow_config

    try:
        config = json.loads((Path(folder) / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError):
        return False
    return is_flow_config(config)


def finished_ids(out: Path) -> set[str]:
    """Ids already answered in out/results.jsonl (a torn last line, from a kill mid-write, is ignored)."""
    path = out / RESULTS
    if not path.is_file():
        return set()
    done = set()
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            done.add(json.loads(text)["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def image_names(item_id: str, n: int) -> list[str]:
    return [f"{item_id}-{i}.png" for i in range(n)]


def remove_leftovers(out: Path, pending: Iterable[BatchItem]) -> int:
    """Delete the temporary images an interrupted run left for requests still to make; how many."""
    removed = 0
    for item in pending:
        for name in image_names(item.id, item.request.n):
            for tmp in out.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def write_images(out: Path, item: BatchItem, images: list, parameters: dict[str, Any]) -> list[str]:
    """Each image to a temporary name (`.NAME.*.tmp`), fsynced, then renamed into place."""
    from sdrt.runtime.infotext import a1111_parameters
    from sdrt.runtime.images import save_png

    names = image_names(item.id, item.request.n)
    for index, (name, image) in enumerate(zip(names, images)):
        save_png(image, out / name, {"parameters": a1111_parameters(parameters, index)}, fsync=True)
    return names


def result_line(item: BatchItem, names: list[str], parameters: dict[str, Any], seconds: float,
                batch_images: int) -> dict[str, Any]:
    r = item.request
    return {"id": item.id, "line": item.line, "images": names, "seeds": r.seeds, "prompt": r.prompt,
            "negative_prompt": r.negative_prompt, "width": r.width, "height": r.height, "steps": r.steps,
            "guidance_scale": r.guidance_scale, "scheduler": parameters.get("scheduler"),
            "backend": parameters.get("backend"), "seconds": round(seconds, 4), "batch_images": batch_images,
            "loras": [{key: lora[key] for key in ("name", "scale", "hash")} for lora in parameters.get("loras", [])]}


class ResultsWriter:
    """Appends one line per finished request, durably, in the order requests finish."""

    def __init__(self, out: Path):
        self.path = out / RESULTS
        self._repair()
        self._file = open(self.path, "a", encoding="utf-8")
        self.written = 0
        self.pause_after = int(os.environ.get(PAUSE_AFTER_ENV) or 0)

    def _repair(self) -> None:
        """Cut a torn last line (no newline: the previous run was killed while writing it)."""
        if self.path.is_file() and self.path.stat().st_size:
            data = self.path.read_bytes()
            if not data.endswith(b"\n"):
                atomic.write_bytes(self.path, data[:data.rfind(b"\n") + 1])

    def write(self, line: dict[str, Any]) -> None:
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.written += 1
        if self.written == self.pause_after:
            print(f"sdrt: {PAUSE_AFTER_ENV}={self.pause_after}: paused after {self.written} results "
                  f"(a test hook); interrupt or kill this process", file=sys.stderr, flush=True)
            while True:  # until a signal ends it (Ctrl-C raises KeyboardInterrupt here)
                time.sleep(3600)

    def close(self) -> None:
        self._file.close()


def group(items: Iterable[BatchItem], max_images: int) -> Iterator[list[BatchItem]]:
    """Consecutive runs of compatible requests, up to `max_images` images each."""
    batch: list[BatchItem] = []
    for item in items:
        if batch and (item.request.batch_key() != batch[0].request.batch_key()
                      or sum(b.request.n for b in batch) + item.request.n > max_images):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def generate_group(pipe: Any, out: Path, batch: list[BatchItem]) -> list[dict[str, Any]]:
    """Run one batch on a pipeline, write its images; the result lines (not yet written)."""
    from sdrt.serve.queueing import Job
    from sdrt.serve.service import run_batch

    results = run_batch(pipe, [Job(item.request) for item in batch])
    lines = []
    for item, result in zip(batch, results):
        names = write_images(out, item, result.images, result.parameters)
        lines.append(result_line(item, names, result.parameters, result.seconds, result.batch_images))
    return lines


def run_local(pipe: Any, items: list[BatchItem], out: Path, max_batch: int, log: Any = print) -> int:
    """Generate the pending items in this process; returns how many requests were made now."""
    writer = ResultsWriter(out)
    made = 0
    try:
        for batch in group(items, max_batch):
            for line in generate_group(pipe, out, batch):
                writer.write(line)
                made += 1
            log(f"{made}/{len(items)} requests")
    finally:
        writer.close()
    return made
