"""The A1111 routes around generation: settings, PNG info, interrupt and skip, and the lists clients read.

========================================  =============================================================
``GET/POST /sdapi/v1/options``            the settings sdrt has (`sdrt.serve.settings`)
``POST /sdapi/v1/png-info``               an image's infotext, read into fields as the web UI reads it
``POST /sdapi/v1/interrupt``, ``/skip``   stop the running batch at its next step; its requests answer
                                          with the images as far as they got (queued ones still run)
``GET /sdapi/v1/prompt-styles``           the --styles file's styles
``GET /sdapi/v1/embeddings``              the --embeddings-dir's textual inversions
``GET /sdapi/v1/sd-vae``                  the --vae NAME=DIR VAEs
``GET /sdapi/v1/upscalers``,              the hires fix's upscalers
``/latent-upscale-modes``
========================================  =============================================================
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from sdrt.serve.a1111_models import PngInfoAnswer, PngInfoRequest


def png_info(service: Any, body: PngInfoRequest) -> dict[str, Any]:
    from sdrt.runtime.infotext import parse_infotext

    image = service.limits.decode_image(body.image, "image")
    chunks = {k: v for k, v in (image.info or {}).items() if isinstance(v, str)}
    text = chunks.pop("parameters", "")
    items = {k: v for k, v in chunks.items() if k != "sdrt"}
    return {"info": text, "items": items, "parameters": parse_infotext(text) if text else {}}


def add_routes(api: APIRouter, service: Any) -> None:
    """The routes of the module docstring, on the A1111 router."""
    from sdrt.runtime.hires import IMAGE_UPSCALERS, LATENT_UPSCALERS

    @api.get("/options")
    async def get_options() -> dict[str, Any]:
        return service.options.current()

    @api.post("/options")
    async def set_options(body: dict[str, Any]) -> dict[str, Any]:
        service.options.update(body)
        return {}

    @api.post("/png-info", response_model=PngInfoAnswer)
    async def read_png_info(body: PngInfoRequest) -> dict[str, Any]:
        return png_info(service, body)

    @api.post("/interrupt")
    async def interrupt() -> dict[str, Any]:
        service.interrupt()
        return {}

    @api.post("/skip")
    async def skip() -> dict[str, Any]:
        service.interrupt()  # one batch runs all of a request's images: skipping it stops it, as interrupt
        return {}

    @api.get("/prompt-styles")
    async def prompt_styles() -> list[dict[str, str]]:
        return service.styles.listing()

    @api.get("/embeddings")
    async def embeddings() -> dict[str, Any]:
        catalog = getattr(service, "embeddings", None)
        return catalog.listing() if catalog is not None else {"loaded": {}, "skipped": {}}

    @api.get("/sd-vae")
    async def sd_vae() -> list[dict[str, Any]]:
        return [{"model_name": name, "filename": name} for name in service.vaes]

    @api.get("/upscalers")
    async def upscalers() -> list[dict[str, Any]]:
        return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
                for name in IMAGE_UPSCALERS]

    @api.get("/latent-upscale-modes")
    async def latent_upscale_modes() -> list[dict[str, str]]:
        return [{"name": name} for name in LATENT_UPSCALERS]

