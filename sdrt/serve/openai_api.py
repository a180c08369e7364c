"""OpenAI-compatible routes: `POST /v1/images/generations` and `GET /v1/models`.

The fields are OpenAI's (`prompt`, `model`, `n`, `size` "WxH", `response_format`); images come back
as `b64_json` (this server keeps no files, so `url` is refused). OpenAI has no seed or step count:
sdrt reads the optional extra fields `seed`, `steps`, `guidance_scale`, `negative_prompt` and
`sampler` (A1111 spelling), which the OpenAI SDK sends through `extra_body`. Errors are OpenAI's
shape: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from sdrt.serve import samplers
from sdrt.serve.access_log import note
from sdrt.serve.dispatch import png_base64, run_job
from sdrt.serve.limits import RequestRejected
from sdrt.serve.queueing import GenerationRequest

DEFAULT_STEPS = 20


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str
    model: str | None = None
    n: int = 1
    size: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    # sdrt's extensions (OpenAI SDK: extra_body={...})
    seed: int | None = None
    steps: int = DEFAULT_STEPS
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    sampler: str | None = None


def parse_size(size: str | None, default: int) -> tuple[int, int]:
    """OpenAI's "WIDTHxHEIGHT" (or "auto" / none: the model's default) -> (width, height)."""
    if size in (None, "", "auto"):
        return default, default
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise RequestRejected(f"size {size!r} is not WIDTHxHEIGHT (e.g. 512x512)") from None
    return width, height


def to_generation(body: ImageGenerationRequest, service: Any) -> GenerationRequest:
    limits = service.limits
    if body.response_format not in (None, "b64_json"):
        raise RequestRejected(f"response_format {body.response_format!r} is not supported: use b64_json "
                              f"(this server keeps no files to link to)")
    if body.output_format not in (None, "png"):
        raise RequestRejected(f"output_format {body.output_format!r} is not supported: use png")
    limits.check_prompt(body.prompt)
    limits.check_prompt(body.negative_prompt, "negative_prompt")
    model = service.model_name(body.model)
    width, height = parse_size(body.size, service.pipelines[model].manifest.default_image_size)
    limits.check_size(width, height)
    limits.check_steps(body.steps)
    limits.check_images(body.n)
    seed = secrets.randbits(32) if body.seed is None or body.seed < 0 else body.seed % 2**32
    prompt, loras = service.loras.resolve(body.prompt)  # the same <lora:NAME:SCALE> tags as A1111's routes
    sampler = samplers.resolve(body.sampler, flow=samplers.flow_model(service.pipelines[model]))
    return GenerationRequest(model=model, prompt=prompt, negative_prompt=body.negative_prompt, n=body.n,
                             width=width, height=height, steps=body.steps, sampler=sampler,
                             guidance_scale=body.guidance_scale, seed=seed, loras=loras)


def router(service: Any) -> APIRouter:
    api = APIRouter(prefix="/v1")

    @api.post("/images/generations")
    async def generations(body: ImageGenerationRequest, http_request: Request) -> dict[str, Any]:
        note(http_request, prompt=body.prompt)
        request = to_generation(body, service)
        result = await run_job(service, request, http_request)
        data = [{"b64_json": png_base64(image), "revised_prompt": None} for image in result.images]
        note(http_request, images=len(data))
        return {"created": int(time.time()), "data": data, "output_format": "png",
                "size": f"{request.width}x{request.height}"}

    @api.get("/models")
    async def models() -> dict[str, Any]:
        return {"object": "list",
                "data": [{"id": name, "object": "model", "created": 0, "owned_by": "sdrt"}
                         for name in service.pipelines]}

    return api
