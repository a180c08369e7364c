"""The access log: one line per HTTP request on the `sdrt.access` logger.

    POST /sdapi/v1/txt2img status=200 seconds=1.234 images=2
    POST /v1/images/generations status=400 seconds=0.002 images=0 prompt="a cat"

Method, path (no query string), status, seconds from the request's arrival to the end of the
answer, and the number of images returned. The prompt is private to its sender: it appears only when
the server was started with --log-prompts. Routes report what they know (images, prompt) with
`note(request, ...)`; the middleware writes the line, also for requests refused before any route
ran (401, 413) and for failures (500). `sdrt serve` sends the logger to stderr (`to_stderr`) and
turns uvicorn's own access log off, so each request is logged once.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "sdrt.access"
log = logging.getLogger(LOGGER_NAME)

#: the key, in the ASGI scope, of the record routes fill in through `note`
SCOPE_KEY = "sdrt.access"


def _quoted(text: str) -> str:
    """`text` in double quotes, with newlines and control characters escaped: it stays one line."""
    return json.dumps(text, ensure_ascii=False)


def _path(path: str) -> str:
    """The path as one token: escapes (json) for anything a client put there to break the line."""
    return _quoted(path)[1:-1].replace(" ", "%20")


def format_line(method: str, path: str, status: int, seconds: float, images: int, prompt: str | None = None) -> str:
    line = f"{method} {_path(path)} status={status} seconds={seconds:.3f} images={images}"
    return line if prompt is None else f"{line} prompt={_quoted(prompt)}"


def note(request: Any, *, images: int | None = None, prompt: str | None = None) -> None:
    """Tell the access log about this request (a Starlette Request): images returned, the prompt sent."""
    record = request.scope.get(SCOPE_KEY)
    if record is None:  # an app without the AccessLog middleware
        return
    if images is not None:
        record["images"] = images
    if prompt is not None:
        record["prompt"] = prompt


class AccessLog:
    """ASGI middleware (outermost): one `sdrt.access` line when a request's answer is complete."""

    def __init__(self, app: Any, log_prompts: bool = False):
        self.app, self.log_prompts = app, log_prompts

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        record: dict[str, Any] = {"status": 500, "images": 0}
        scope[SCOPE_KEY] = record

        async def recording_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:  # an exception (500 from the server's error handler outside) is logged as 500
            prompt = record.get("prompt") if self.log_prompts else None
            log.info(format_line(scope.get("method", "?"), scope.get("path", ""), record["status"],
                                 time.perf_counter() - started, record["images"], prompt))


def to_stderr() -> None:
    """Send the access log to stderr, one line each with a timestamp (once per process)."""
    if any(getattr(h, "_sdrt_access", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s sdrt.access %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler._sdrt_access = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
