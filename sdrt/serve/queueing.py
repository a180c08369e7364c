"""The bounded job queue and the dynamic batcher: what a model's worker thread pulls its batches from.

A job waits in its model's queue until the worker takes it. The worker takes the oldest job, then,
for up to `batch_wait_s`, gathers every queued job with the same batch key (same mode, size,
steps, sampler, guidance, strength, LoRAs, ControlNet units) until the batch holds `max_batch` images; other jobs keep their
place in line. A full queue refuses new jobs at once (the HTTP layer answers 429); cancelled jobs
(client gone, timed out) are dropped when they come up.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The queue holds `maxsize` jobs already: try again later."""


class JobCancelled(Exception):
    """The job's client went away or its time ran out before it ran."""


@dataclass
class GenerationRequest:
    """One request, normalized from whichever API it came through (all seeds resolved)."""

    model: str
    prompt: str
    negative_prompt: str = ""
    n: int = 1
    width: int = 512
    height: int = 512
    steps: int = 20
    sampler: str | None = None  # sdrt scheduler name; None: the model's own
    guidance_scale: float | None = 7.5  # None: the model's own default (Flux: 3.5, its embedded guidance)
    true_cfg_scale: float = 1.0  # Flux: true classifier-free guidance with the negative prompt (> 1)
    seed: int = 0  # image i uses seed + i
    strength: float = 0.75
    init_image: Any = None  # PIL image (img2img / inpainting)
    mask: Any = None  # PIL image (inpainting; white = repaint)
    loras: tuple = ()  # ((file, scale), ...) the server resolved from the prompt's <lora:...> tags
    syntax: str | None = None  # prompt syntax: "a1111" (the A1111 API's default) or None (diffusers')
    text_chunks: int = 1  # 77-token chunks its prompts need (a batch never pads one request's text)
    clip_skip: int | None = None  # diffusers' count (A1111's CLIP_stop_at_last_layers - 1)
    subseed: int = 0  # variation seed: image i uses subseed + i
    subseed_strength: float = 0.0
    seed_resize: tuple | None = None  # (height, width) the seed's noise is drawn at
    hires: Any = None  # sdrt.runtime.hires.HiresFix (txt2img only)
    vae: tuple | None = None  # (NAME, DIR) of a --vae of the server; None: the model's own
    controlnets: tuple = ()  # sdrt.serve.controlnets.Unit per enabled ControlNet unit
    ip_adapter: Any = None  # sdrt.serve.controlnets.IPUnit of an IP-Adapter unit, or None

    def __post_init__(self) -> None:
        self.loras = tuple((str(path), float(scale)) for path, scale in self.loras)

    @property
    def mode(self) -> str:
        return "inpaint" if self.mask is not None else "img2img" if self.init_image is not None else "txt2img"

    @property
    def seeds(self) -> list[int]:
        return [(self.seed + i) % 2**32 for i in range(self.n)]

    @property
    def subseeds(self) -> list[int]:
        return [(self.subseed + i) % 2**32 for i in range(self.n)]

    def batch_key(self) -> tuple:
        """Requests with equal keys run in one UNet batch."""
        strength = self.strength if self.init_image is not None else None
        return (self.model, self.mode, self.width, self.height, self.steps, self.sampler,
                self.guidance_scale, self.true_cfg_scale, strength, self.loras, self.syntax, self.text_chunks,
                self.clip_skip, self.subseed_strength, self.seed_resize, self.hires, self.vae,
                tuple(unit.key for unit in self.controlnets), self.ip_adapter and self.ip_adapter.key)


def distilled_guidance(pipe: Any) -> bool:
    """Whether a model embeds its guidance scale and takes true CFG separately (Flux: its family's guidance
    is "distilled"); the UNet families guide with classifier-free guidance."""
    family = getattr(pipe, "family_spec", None)
    return getattr(family, "guidance", "cfg") == "distilled"


_ids = itertools.count(1)


@dataclass
class Job:
    request: GenerationRequest
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)
    id: int = field(default_factory=lambda: next(_ids))

    def cancel(self) -> None:
        self.cancelled.set()


class JobQueue:
    """A bounded FIFO of jobs whose consumer may take compatible jobs out of order."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._jobs: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._jobs) >= self.maxsize:
                raise QueueFull(f"the queue holds {self.maxsize} jobs")
            self._jobs.append(job)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._jobs if j.cancelled.is_set()]:
            self._jobs.remove(job)
            job.future.set_exception(JobCancelled())

    def take_batch(self, max_images: int, wait_s: float) -> list[Job]:
        """Block for the next job, then gather compatible ones; [] once closed and empty."""
        with self._cond:
            while True:
                self._drop_cancelled()
                if self._jobs:
                    break
                if self._closed:
                    return []
                self._cond.wait(0.5)
            first = self._jobs.popleft()
            batch, images, key = [first], first.request.n, first.request.batch_key()
            deadline = time.monotonic() + wait_s
            while images < max_images:
                self._drop_cancelled()
                for job in list(self._jobs):
                    if job.request.batch_key() == key and images + job.request.n <= max_images:
                        self._jobs.remove(job)
                        batch.append(job)
                        images += job.request.n
                left = deadline - time.monotonic()
                if images >= max_images or left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            return batch
