"""The FastAPI app: A1111 and OpenAI routes over one `Service`, plus health, metrics, the page and the guards.

Outermost, the access log (sdrt.serve.access_log: one line per request). Then the guards, outermost
first: the body-size limit (413 before a byte past the limit is read), the API key
(Bearer, or HTTP Basic with the key as password for A1111 clients; compared in constant time; the
page and the health probes stay open), CORS only for the origins given. Every error is JSON with
a 4xx/5xx status: requests the server refuses say why and what to send instead, and an internal
failure says only that it happened (the traceback goes to the server's log, never to the client).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdrt.errors import SdrtError
from sdrt.serve import a1111, openai_api
from sdrt.serve.access_log import AccessLog
from sdrt.serve.dispatch import ClientGone, Overloaded
from sdrt.serve.limits import RequestRejected
from sdrt.serve.metrics import CONTENT_TYPE_LATEST, Metrics

log = logging.getLogger("sdrt.serve")

#: paths open without the API key: the page (it asks for the key itself) and the probes
OPEN_PATHS = ("/", "/healthz", "/readyz")


def error_body(path: str, message: str, status: int) -> dict[str, Any]:
    """OpenAI's error shape under /v1, A1111's (FastAPI's `detail` plus `error`) elsewhere."""
    if path.startswith("/v1/"):
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return {"error": "HTTPException" if status < 500 else "InternalError", "detail": message}


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes` (by Content-Length, and while streaming)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(scope, send)
        seen = 0

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(scope, send)

    async def _refuse(self, scope: dict, send: Any) -> None:
        message = f"request body over this server's limit of {self.max_bytes} bytes: send less (smaller images)"
        await JSONResponse(error_body(scope["path"], message, 413), status_code=413)(scope, None, send)


class _TooLarge(Exception):
    pass


def key_matches(header: str | None, api_key: str) -> bool:
    """`Authorization: Bearer KEY` or `Basic base64(user:KEY)`, compared in constant time."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8"), api_key.encode("utf-8"))


class Guard:
    """ASGI middleware: the API key check, and per-route request counts, errors and latency.

    Plain ASGI (not Starlette's BaseHTTPMiddleware), so a route still sees its client disconnect."""

    def __init__(self, app: Any, api_key: str | None, metrics: Metrics):
        self.app, self.api_key, self.metrics = app, api_key, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def recording_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        path = scope["path"]
        try:
            if self.api_key and path not in OPEN_PATHS and not key_matches(_header(scope, b"authorization"),
                                                                           self.api_key):
                response = JSONResponse(error_body(path, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                                   401), status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, recording_send)
            else:
                await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.requests.labels(route, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)


def _header(scope: dict, name: bytes) -> str | None:
    value = dict(scope.get("headers") or []).get(name)
    return value.decode("latin-1") if value is not None else None


def create_app(service: Any, *, api_key: str | None = None, cors_origins: tuple[str, ...] = (),
               metrics: Metrics | None = None, log_prompts: bool = False) -> FastAPI:
    """The app over `service`; `log_prompts`: the access log also writes each request's prompt."""
    metrics = metrics or service.metrics or Metrics()
    from sdrt import __version__

    # the schema A1111 publishes too (/openapi.json, /docs): what clients and schema-driven fuzzers read
    app = FastAPI(title="sdrt serve", version=__version__, docs_url="/docs", redoc_url=None,
                  openapi_url="/openapi.json",
                  description="AUTOMATIC1111-compatible (/sdapi/v1) and OpenAI-compatible (/v1) image generation")
    app.state.service = service

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(Guard, api_key=api_key, metrics=metrics)
    app.add_middleware(BodyLimit, max_bytes=service.limits.max_body_bytes)
    app.add_middleware(AccessLog, log_prompts=log_prompts)  # added last: outermost, sees every answer

    @app.exception_handler(RequestRejected)
    async def rejected(request: Request, e: RequestRejected) -> JSONResponse:
        headers = {"Retry-After": str(e.retry_after_s)} if isinstance(e, Overloaded) else None
        return JSONResponse(error_body(request.url.path, str(e), e.status), status_code=e.status, headers=headers)

    @app.exception_handler(SdrtError)
    async def refused(request: Request, e: SdrtError) -> JSONResponse:
        # a value the pipeline's own checks refused (a size its UNet cannot run, a prompt too long for
        # an older export...): the request's fault, one line, never a 500
        return JSONResponse(error_body(request.url.path, str(e), 400), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in err.get('loc', ())[1:]) or 'body'}: {err.get('msg')}"
                             for err in e.errors()[:5])
        return JSONResponse(error_body(request.url.path, f"invalid request: {problems}", 422), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(request.url.path, str(e.detail), e.status_code), status_code=e.status_code)

    @app.exception_handler(ClientGone)
    async def gone(request: Request, e: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("request %s failed", request.url.path)
        return JSONResponse(error_body(request.url.path, f"internal error ({type(e).__name__}); see the server log",
                                       500), status_code=500)

    app.include_router(a1111.router(service))
    app.include_router(a1111.controlnet_router(service))
    app.include_router(openai_api.router(service))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = service.ready
        batching = {name: w.batching for name, w in service.workers.items()}
        return JSONResponse({"ready": ready, "models": list(service.pipelines), "batching": batching},
                            status_code=200 if ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        for name, worker in service.workers.items():
            metrics.queue_depth.labels(name).set(len(worker.queue))
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    page = resources.files("sdrt.serve").joinpath("ui.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def ui() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                           "style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

    return app
