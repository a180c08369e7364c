"""The models a server holds, one worker thread each, and the call that turns a batch of jobs into images.

Each loaded model has one `ModelWorker`: a thread that takes batches from the model's bounded
`JobQueue` and runs each batch as one pipeline call (after switching the pipeline to the batch's LoRAs), so calls into one Pipeline never overlap and
compatible requests share their UNet batch. Every image keeps its own seed (image i of a request
with seed s uses s + i), so an image does not depend on what it was batched with.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from sdrt.errors import SdrtError
from sdrt.serve import controlnets
from sdrt.serve.controlnets import ControlNetCatalog
from sdrt.serve.loras import LoraCatalog, LoraSwitchFailed, rejection, use_loras
from sdrt.serve.queueing import GenerationRequest, Job, JobCancelled, JobQueue, QueueFull


@dataclass
class JobResult:
    images: list  # PIL images, one per seed
    seeds: list[int]
    parameters: dict[str, Any]  # the pipeline's parameters of the call, with this job's prompt and seeds
    batch_images: int  # images in the UNet batch this job ran in
    seconds: float


class BatchCancelled(Exception):
    """Every job of the running batch was cancelled: the denoising loop stops early."""


class Interrupted(Exception):
    """POST /sdapi/v1/interrupt (or /skip): the running batch stops at its next step; `latents` is where."""

    def __init__(self, latents: Any):
        super().__init__("interrupted")
        self.latents = latents


def _features(first: GenerationRequest, jobs: list[Job]) -> dict[str, Any]:
    """The call options of the batch's shared features, only those asked for (a pipeline without them
    never sees their arguments)."""
    options: dict[str, Any] = {}
    if first.syntax is not None:
        options["prompt_syntax"] = first.syntax
    if first.clip_skip:
        options["clip_skip"] = first.clip_skip
    if first.subseed_strength > 0:
        options.update(subseed=[s for j in jobs for s in j.request.subseeds], subseed_strength=first.subseed_strength)
    if first.seed_resize is not None:
        options.update(seed_resize_from_h=first.seed_resize[0], seed_resize_from_w=first.seed_resize[1])
    return options


def run_batch(pipe: Any, jobs: list[Job], callback: Callable | None = None) -> list[JobResult]:
    """One pipeline call for compatible jobs (same LoRAs and VAE, set first): prompts repeated per image, one
    seed each; with the hires fix, its two passes."""
    first = jobs[0].request
    facts = getattr(getattr(pipe, "manifest", None), "pipeline", {})
    if (first.controlnets and not facts.get("residual_inputs")) or (first.ip_adapter and not
                                                                    facts.get("ip_adapter_inputs")):
        use_loras(pipe, ())  # the UNet is reloaded next: an earlier batch's merged LoRAs come off first
    if first.controlnets or getattr(pipe, "controlnets", None):  # before the LoRAs: it may reload the UNet
        pipe.set_controlnets([unit.folder for unit in first.controlnets])
    if first.ip_adapter is not None:  # a batch without one keeps the loaded IP-Adapter, bound to zeros (the base)
        pipe.set_ip_adapter(first.ip_adapter.folder)
        pipe.set_ip_adapter_scale(first.ip_adapter.weight)
    use_loras(pipe, first.loras)  # a no-op when the pipeline has them already
    if hasattr(pipe, "use_vae"):
        pipe.use_vae(first.vae[1] if first.vae else None)  # (name, folder) of a --vae, or the model's own
    control = controlnets.call_arguments([j.request.controlnets for j in jobs], [j.request.n for j in jobs])
    if first.ip_adapter is not None:  # one image prompt per call: the batch key holds the folder, not the image
        control["ip_adapter_image"] = first.ip_adapter.image
    prompts = [j.request.prompt for j in jobs for _ in range(j.request.n)]
    negatives = [j.request.negative_prompt for j in jobs for _ in range(j.request.n)]
    seeds = [s for j in jobs for s in j.request.seeds]
    images = [j.request.init_image for j in jobs for _ in range(j.request.n)] if first.init_image else None
    masks = [j.request.mask for j in jobs for _ in range(j.request.n)] if first.mask else None
    t0 = time.perf_counter()
    call = dict(negative_prompt=negatives, num_inference_steps=first.steps, guidance_scale=first.guidance_scale,
                height=first.height, width=first.width, num_images_per_prompt=1, seed=seeds, scheduler=first.sampler,
                callback=callback, **_features(first, jobs), **control)
    if first.true_cfg_scale != 1.0:  # only Flux takes it
        call["true_cfg_scale"] = first.true_cfg_scale
    try:
        if first.hires is not None:
            from sdrt.runtime.hires import generate

            out = generate(pipe, prompts, hires=first.hires, **call)
        else:
            out = pipe(prompts, image=images, strength=first.strength, mask_image=masks, **call)
    except Interrupted as stop:  # the web UI's answer: the images as far as they got
        from sdrt.runtime.images import to_pil

        out = _stopped(pipe, first, prompts, negatives, seeds, to_pil(pipe.decode(stop.latents)))
    seconds = time.perf_counter() - t0
    results, start = [], 0
    for job in jobs:
        n = job.request.n
        params = {**out.parameters, "prompt": [job.request.prompt], "negative_prompt": [job.request.negative_prompt],
                  "seed": job.request.seed, "seeds": job.request.seeds, "num_images_per_prompt": n}
        if "subseeds" in params:
            params.update(subseed=job.request.subseed, subseeds=job.request.subseeds)
        if job.request.controlnets or job.request.ip_adapter:  # names as the request gave them, never folders
            params.pop("ip_adapter", None)
            params["controlnets"] = controlnets.describe(job.request.controlnets, job.request.ip_adapter)
        results.append(JobResult(list(out.images[start:start + n]), job.request.seeds, params, len(seeds), seconds))
        start += n
    return results


def _stopped(pipe: Any, first: GenerationRequest, prompts: list, negatives: list, seeds: list, images: list) -> Any:
    """An interrupted batch's output: its decoded latents and what was asked (no scheduler ran to the end)."""
    from types import SimpleNamespace

    parameters = {"mode": first.mode, "prompt": prompts, "negative_prompt": negatives, "steps": first.steps,
                  "guidance_scale": first.guidance_scale, "scheduler": first.sampler or "default",
                  "seed": seeds[0], "seeds": seeds, "height": first.height, "width": first.width,
                  "num_images_per_prompt": 1, "backend": pipe.backend_name, "interrupted": True,
                  "model": str(pipe.manifest.data.get("source", {}).get("name") or pipe.manifest.folder)}
    return SimpleNamespace(images=images, parameters=parameters)


@dataclass
class Progress:
    """What /sdapi/v1/progress reports: the batch a worker is denoising."""

    job_ids: tuple[int, ...] = ()
    step: int = 0
    steps: int = 0
    started: float = 0.0


class ModelWorker:
    """One thread per model: batches from the queue -> one pipeline call each -> the jobs' futures."""

    def __init__(self, name: str, pipe: Any, queue_size: int, max_batch: int, batch_wait_s: float,
                 metrics: Any = None):
        self.name, self.pipe, self.metrics = name, pipe, metrics
        self.queue = JobQueue(queue_size)
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.batching = max_batch > 1
        self.progress = Progress()
        self.interrupt = threading.Event()  # set by /sdapi/v1/interrupt and /skip: stop the running batch
        self._thread = threading.Thread(target=self._loop, name=f"sdrt-worker-{name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, request: GenerationRequest) -> Job:
        job = Job(request)
        self.queue.put(job)  # QueueFull propagates
        if self.metrics:
            self.metrics.queue_depth.labels(self.name).set(len(self.queue))
        return job

    def close(self, timeout: float = 30.0) -> None:
        self.queue.close()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            batch = self.queue.take_batch(self.max_batch if self.batching else 1, self.batch_wait_s)
            if self.metrics:
                self.metrics.queue_depth.labels(self.name).set(len(self.queue))
            if not batch:
                return
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        request = batch[0].request
        steps = request.steps
        self.progress = Progress(tuple(j.id for j in batch), 0, steps, time.monotonic())
        self.interrupt.clear()

        def on_step(i: int, t: Any, x: Any) -> None:
            self.progress.step, self.progress.steps = i + 1, max(self.progress.steps, i + 1)
            if all(j.cancelled.is_set() for j in batch):
                raise BatchCancelled()
            if self.interrupt.is_set():
                raise Interrupted(x)

        try:
            results = run_batch(self.pipe, batch, on_step)
        except BatchCancelled:
            for job in batch:
                job.future.set_exception(JobCancelled())
            return
        except LoraSwitchFailed as e:  # the server's file is at fault; the answer names the LoRA, not its path
            for job in batch:
                job.future.set_exception(rejection(e))
            return
        except SdrtError as e:  # a bad combination the pipeline caught (e.g. strength leaves no step)
            for job in batch:
                job.future.set_exception(e)
            return
        except Exception as e:  # noqa: BLE001 - the worker must survive; the HTTP layer answers 500
            for job in batch:
                job.future.set_exception(e)
            return
        finally:
            self.progress = Progress()
            self.interrupt.clear()
        if self.metrics:
            self.metrics.batch_images.labels(self.name).observe(sum(j.request.n for j in batch))
            self.metrics.images.labels(self.name).inc(sum(j.request.n for j in batch if not j.cancelled.is_set()))
        for job, result in zip(batch, results):
            if job.cancelled.is_set():
                job.future.set_exception(JobCancelled())
            else:
                job.future.set_result(result)


class Service:
    """The loaded models (only these may be asked for), their workers and the request limits."""

    def __init__(self, pipelines: dict[str, Any], *, limits: Any, queue_size: int = 64, max_batch: int = 4,
                 batch_wait_s: float = 0.01, timeout_s: float = 600.0, metrics: Any = None,
                 loras: LoraCatalog | None = None, styles: Any = None, vaes: dict[str, Any] | None = None,
                 controlnets: ControlNetCatalog | None = None):
        from sdrt.serve.settings import Options
        from sdrt.serve.styles import Styles

        if not pipelines:
            raise SdrtError("no model to serve: pass --model DIR")
        self.limits, self.timeout_s, self.metrics = limits, timeout_s, metrics
        self.loras = loras or LoraCatalog()
        self.styles = styles or Styles()
        self.vaes = dict(vaes or {})  # --vae NAME=DIR: name -> folder (each pipeline loads it on first use)
        self.options = Options(list(pipelines), list(self.vaes))
        self.controlnets = controlnets or ControlNetCatalog()
        self.pipelines = dict(pipelines)
        self.workers = {name: ModelWorker(name, pipe, queue_size, max_batch, batch_wait_s, metrics)
                        for name, pipe in self.pipelines.items()}
        self.default_model = next(iter(self.pipelines))

    @property
    def ready(self) -> bool:
        return all(w.alive for w in self.workers.values())

    @property
    def embeddings(self) -> Any:
        """The default model's textual inversions (GET /sdapi/v1/embeddings), or None."""
        return getattr(self.pipelines[self.options.current()["sd_model_checkpoint"]], "embeddings", None)

    def interrupt(self) -> None:
        """Stop every running batch at its next step (its requests answer with the images so far)."""
        for worker in self.workers.values():
            if worker.progress.job_ids:
                worker.interrupt.set()

    def model_name(self, requested: str | None) -> str:
        """A requested model name (None: the server's current sd_model_checkpoint) -> the loaded model's name."""
        if not requested:
            return self.options.current()["sd_model_checkpoint"]
        name = requested.split(" [", 1)[0]  # A1111 titles carry " [hash]"
        if name not in self.pipelines:
            from sdrt.serve.limits import RequestRejected

            raise RequestRejected(f"model {requested!r} is not loaded here: use one of "
                                  f"{', '.join(self.pipelines)}", 404)
        return name

    def submit(self, request: GenerationRequest) -> Job:
        return self.workers[request.model].submit(request)

    def queue_depth(self) -> int:
        return sum(len(w.queue) for w in self.workers.values())

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()


__all__ = ["Service", "ModelWorker", "JobResult", "run_batch", "QueueFull", "JobCancelled", "GenerationRequest"]
