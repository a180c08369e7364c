"""Serve fixtures: a scriptable fake pipeline (for queueing logic), the tiny preset's real one, and a live
uvicorn server on 127.0.0.1 (a free port, stopped at the end of the test)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import pytest

pytest.importorskip("fastapi")


class FakePipe:
    """Records each call; `hold` blocks calls until released. Each image is a flat colour from its seed."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.steps_run = 0
        self.manifest = SimpleNamespace(default_image_size=64)

    def __call__(self, prompt: Any, negative_prompt: Any = None, num_inference_steps: int = 50,
                 guidance_scale: float = 7.5, height: int | None = None, width: int | None = None,
                 num_images_per_prompt: int = 1, seed: int | Sequence[int] | None = None, scheduler: Any = None,
                 image: Any = None, strength: float = 0.8, mask_image: Any = None, callback: Any = None,
                 **extra: Any) -> Any:
        from PIL import Image

        from sdrt.runtime.schedulers import A1111_NAMES

        self.entered.set()
        assert self.hold.wait(30), "test never released the fake pipeline"
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
        self.calls.append({"prompts": prompts, "seeds": seeds, "steps": num_inference_steps, "width": width,
                           "negatives": list(negative_prompt or []), **extra})
        for i in range(num_inference_steps):
            if callback is not None:
                callback(i, i, None)
            self.steps_run += 1
        images = [Image.new("RGB", (width, height), (s % 256, 0, 0)) for s in seeds]
        params = {"mode": "txt2img", "prompt": prompts, "negative_prompt": list(negative_prompt or [""] * len(prompts)),
                  "steps": num_inference_steps, "guidance_scale": guidance_scale, "scheduler": "PNDMScheduler",
                  "sampler": A1111_NAMES.get(scheduler, "PLMS"),
                  "seed": seeds[0], "seeds": seeds, "height": height, "width": width, "num_images_per_prompt": 1,
                  "backend": "fake", "model": "fake"}
        return SimpleNamespace(images=images, seed=seed, parameters=params)


def make_service(pipes: dict, **kwargs: Any):
    from sdrt.serve.limits import Limits
    from sdrt.serve.metrics import Metrics
    from sdrt.serve.service import Service

    limits = kwargs.pop("limits", Limits())
    return Service(pipes, limits=limits, metrics=Metrics(), **kwargs)


@pytest.fixture
def fake_service():
    services = []

    def make(**kwargs: Any):
        pipe = kwargs.pop("pipe", None) or FakePipe()
        service = make_service({"fake": pipe}, **kwargs)
        services.append(service)
        return service, pipe

    yield make
    for service in services:
        for worker in service.workers.values():
            worker.pipe.hold.set()
        service.close()


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_onnx):
    from sdrt.runtime import Pipeline

    return Pipeline.load(tiny_onnx, backend="ort-cpu")


@contextlib.contextmanager
def live_server(app: Any, timeout_s: float = 60.0):
    """Serve `app` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()


def wait_for(condition: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def decode_b64_png(data: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
