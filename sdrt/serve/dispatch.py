"""From an HTTP request to a finished job: enqueue, wait (bounded), and give up when the client leaves."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

from sdrt.serve.limits import RequestRejected
from sdrt.serve.queueing import GenerationRequest, JobCancelled, QueueFull
from sdrt.serve.service import JobResult, Service

#: how often a waiting request checks whether its client is still there
POLL_S = 0.25


class Overloaded(RequestRejected):
    """The queue is full: 429 with a Retry-After header."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, 429)
        self.retry_after_s = retry_after_s


class ClientGone(Exception):
    """The client disconnected; nothing is sent back."""


async def run_job(service: Service, request: GenerationRequest, http_request: Any = None) -> JobResult:
    """Queue the request, wait for its result; cancel it on timeout or disconnect."""
    try:
        job = service.submit(request)
    except QueueFull as e:
        raise Overloaded(f"server busy ({e}): retry later", retry_after_s=retry_after(service, request)) from None
    future = asyncio.wrap_future(job.future)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + service.timeout_s
    try:
        while True:
            left = deadline - loop.time()
            if left <= 0:
                job.cancel()
                raise RequestRejected(f"the request took over {service.timeout_s:g} s: ask for fewer steps or "
                                      f"images, or raise the server's --timeout", 504)
            done, _ = await asyncio.wait({future}, timeout=min(POLL_S, left))
            if done:
                return future.result()
            if http_request is not None and await http_request.is_disconnected():
                job.cancel()
                raise ClientGone()
    except JobCancelled:
        raise RequestRejected("the request was cancelled before it finished", 503) from None
    except asyncio.CancelledError:
        job.cancel()
        raise


def retry_after(service: Service, request: GenerationRequest) -> int:
    """Seconds a client should wait: a rough guess from the queue length (at least 1)."""
    worker = service.workers[request.model]
    return max(1, min(60, len(worker.queue) * max(1, request.steps) // 50))


def png_base64(image: Any, parameters_text: str | None = None) -> str:
    """A PIL image -> base64 PNG (with A1111's "parameters" text chunk when given)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if parameters_text:
        info.add_text("parameters", parameters_text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
