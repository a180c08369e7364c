"""AUTOMATIC1111-compatible routes (`/sdapi/v1/...`): the fields and answers that web UI's API defines.

Requests carry A1111's field names and defaults; fields this server has no feature for are
accepted when they hold A1111's default value and refused (400, naming the field) when they ask
for the feature (hires fix, face restoration, scripts...). Answers are A1111's: `images` (base64
PNG, each with its "parameters" text chunk), `parameters` (the request as understood) and `info`
(a JSON string: seeds, prompts, sampler, infotexts...). `<lora:NAME:SCALE>` tags in the prompt pick
LoRAs of the server's --lora-dir by name (sdrt.serve.loras); GET /sdapi/v1/loras lists them.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from sdrt.runtime.infotext import a1111_parameters, controlnet_unit
from sdrt.serve import controlnets, samplers
from sdrt.serve.access_log import note
from sdrt.serve.dispatch import png_base64, run_job
from sdrt.serve.limits import RequestRejected
from sdrt.serve.queueing import GenerationRequest

#: fields whose non-default value asks for a feature this server does not have
UNSUPPORTED = {"enable_hr": False, "restore_faces": False, "tiling": False, "script_name": None,
               "subseed_strength": 0.0, "alwayson_scripts": {}}


class Txt2ImgRequest(BaseModel):
    """A1111's StableDiffusionTxt2ImgProcessingAPI (the fields sdrt reads; any other is echoed back)."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    denoising_strength: float | None = None
    override_settings: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True
    save_images: bool = False
    enable_hr: bool = False
    restore_faces: bool | None = False
    tiling: bool | None = False
    script_name: str | None = None
    subseed_strength: float = 0.0
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)


class Img2ImgRequest(Txt2ImgRequest):
    """A1111's StableDiffusionImg2ImgProcessingAPI: init images, mask, denoising strength."""

    init_images: list[str] = Field(default_factory=list)
    mask: str | None = None
    denoising_strength: float = 0.75
    resize_mode: int = 0
    inpainting_mask_invert: int = 0
    include_init_images: bool = False


def _check_supported(body: Txt2ImgRequest) -> None:
    for name, default in UNSUPPORTED.items():
        value = getattr(body, name)
        if name == "alwayson_scripts":  # ControlNet units are read (sdrt.serve.controlnets); any other script is not
            value = {k: v for k, v in (value or {}).items() if k.lower() != "controlnet"}
        if value not in (default, None) and not (name == "alwayson_scripts" and not value):
            raise RequestRejected(f"{name}={value!r} is not supported by sdrt serve: leave it at {default!r}")
    if body.save_images:
        raise RequestRejected("save_images is not supported: this server writes no files; save the returned images")


def _fit(image: Image.Image, width: int, height: int, resize_mode: int, label: str) -> Image.Image:
    """A1111's resize_mode 0 ("Just resize"): stretch to the requested size."""
    if resize_mode != 0:
        raise RequestRejected(f"resize_mode {resize_mode} is not supported: use 0 (just resize) or send "
                              f"the {label} at {width}x{height}")
    return image if image.size == (width, height) else image.resize((width, height), Image.LANCZOS)


def to_generation(body: Txt2ImgRequest, service: Any) -> GenerationRequest:
    limits = service.limits
    _check_supported(body)
    limits.check_prompt(body.prompt)
    limits.check_prompt(body.negative_prompt, "negative_prompt")
    limits.check_size(body.width, body.height)
    limits.check_steps(body.steps)
    if body.batch_size < 1 or body.n_iter < 1:
        raise RequestRejected("batch_size and n_iter must be >= 1")
    limits.check_images(body.batch_size * body.n_iter)
    seed = secrets.randbits(32) if body.seed is None or body.seed < 0 else body.seed % 2**32
    prompt, loras = service.loras.resolve(body.prompt)  # <lora:NAME:SCALE> tags: names of --lora-dir files only
    model = service.model_name(body.override_settings.get("sd_model_checkpoint"))
    flow = samplers.flow_model(service.pipelines[model])  # SD3 / Flux take the flow-matching samplers
    request = GenerationRequest(
        model=model, prompt=prompt, negative_prompt=body.negative_prompt, n=body.batch_size * body.n_iter,
        width=body.width, height=body.height, steps=body.steps,
        sampler=samplers.resolve(body.sampler_name or body.sampler_index, body.scheduler, flow=flow),
        guidance_scale=body.cfg_scale, seed=seed, loras=loras)
    units = controlnets.scripts_units(body.alwayson_scripts)
    if units:
        request.controlnets = controlnets.parse_units(units, service.controlnets, limits, width=body.width,
                                                      height=body.height)
    if isinstance(body, Img2ImgRequest):
        if not body.init_images:
            raise RequestRejected("init_images is empty: send one base64 image")
        if len(body.init_images) > 1:
            raise RequestRejected("init_images has several images: send one per request")
        if not 0.0 < body.denoising_strength <= 1.0:
            raise RequestRejected(f"denoising_strength {body.denoising_strength} is outside (0, 1]")
        image = limits.decode_image(body.init_images[0], "init_images[0]").convert("RGB")
        request.init_image = _fit(image, body.width, body.height, body.resize_mode, "init image")
        request.strength = body.denoising_strength
        if body.mask:
            mask = limits.decode_image(body.mask, "mask").convert("L")
            if body.inpainting_mask_invert:
                mask = mask.point(lambda v: 255 - v)
            request.mask = _fit(mask, body.width, body.height, body.resize_mode, "mask")
    return request


def _answer(body: Txt2ImgRequest, request: GenerationRequest, result: Any, service: Any) -> dict[str, Any]:
    params = {**result.parameters, "model": request.model}
    sampler = params.get("sampler") or params["scheduler"]  # A1111's name for what ran (a class name if none fits)
    infotexts = [a1111_parameters(params, index) for index in range(len(result.seeds))]
    n = request.n
    extra = {"Backend": params["backend"]}
    for i, unit in enumerate(params.get("controlnets", [])):
        extra[f"ControlNet {i}"] = controlnet_unit(unit)
    if params.get("loras"):  # as A1111 writes them (name: short hash), never the server's paths
        extra["Lora hashes"] = ", ".join(f"{lora['name']}: {lora['hash']}" for lora in params["loras"])
    info = {
        "prompt": body.prompt, "all_prompts": [body.prompt] * n,  # A1111 keeps the <lora:...> tags here
        "negative_prompt": request.negative_prompt, "all_negative_prompts": [request.negative_prompt] * n,
        "seed": request.seed, "all_seeds": result.seeds, "subseed": -1, "all_subseeds": [-1] * n,
        "subseed_strength": 0, "width": request.width, "height": request.height, "sampler_name": sampler,
        "scheduler": params.get("schedule_type") or body.scheduler or "Automatic", "cfg_scale": request.guidance_scale, "steps": request.steps,
        "batch_size": body.batch_size, "restore_faces": False, "sd_model_name": request.model,
        "sd_model_hash": None, "denoising_strength": request.strength if request.init_image else None,
        "extra_generation_params": extra, "index_of_first_image": 0,
        "infotexts": infotexts, "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1, "is_using_inpainting_conditioning": False, "version": "sdrt",
    }
    parameters = body.model_dump()
    if isinstance(body, Img2ImgRequest):  # A1111 does not echo the images back
        parameters["init_images"] = None
        parameters["mask"] = None
    images = [png_base64(img, text) for img, text in zip(result.images, infotexts)] if body.send_images else []
    return {"images": images, "parameters": parameters, "info": json.dumps(info)}


def router(service: Any) -> APIRouter:
    api = APIRouter(prefix="/sdapi/v1")

    async def generate(body: Txt2ImgRequest, http_request: Request) -> dict[str, Any]:
        note(http_request, prompt=body.prompt)
        request = to_generation(body, service)
        result = await run_job(service, request, http_request)
        answer = _answer(body, request, result, service)
        note(http_request, images=len(answer["images"]))
        return answer

    @api.post("/txt2img")
    async def txt2img(body: Txt2ImgRequest, http_request: Request) -> dict[str, Any]:
        return await generate(body, http_request)

    @api.post("/img2img")
    async def img2img(body: Img2ImgRequest, http_request: Request) -> dict[str, Any]:
        return await generate(body, http_request)

    @api.get("/sd-models")
    async def sd_models() -> list[dict[str, Any]]:
        return [{"title": name, "model_name": name, "hash": None, "sha256": None, "filename": name, "config": None}
                for name in service.pipelines]

    @api.get("/samplers")
    async def sampler_list() -> list[dict[str, Any]]:
        kinds = [samplers.flow_model(pipe) for pipe in service.pipelines.values()]
        return samplers.listing(unet=not all(kinds), flow=any(kinds))

    @api.get("/schedulers")
    async def schedule_list() -> list[dict[str, Any]]:
        return samplers.schedule_listing(flow=any(samplers.flow_model(p) for p in service.pipelines.values()))

    @api.get("/loras")
    async def lora_list() -> list[dict[str, Any]]:
        return service.loras.listing()

    @api.get("/scripts")  # (sd-webui-controlnet's own routes: controlnet_router)
    async def scripts() -> dict[str, list]:
        return {"txt2img": [], "img2img": []}

    @api.get("/progress")
    async def progress() -> dict[str, Any]:
        running = [w.progress for w in service.workers.values() if w.progress.job_ids]
        queued = service.queue_depth()
        if not running:
            return {"progress": 0.0, "eta_relative": 0.0, "current_image": None, "textinfo": None,
                    "state": {"skipped": False, "interrupted": False, "job": "", "job_count": queued,
                              "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}}
        p = running[0]
        fraction = p.step / p.steps if p.steps else 0.0
        elapsed = time.monotonic() - p.started
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        return {"progress": fraction, "eta_relative": eta, "current_image": None, "textinfo": None,
                "state": {"skipped": False, "interrupted": False, "job": f"job {p.job_ids[0]}",
                          "job_count": queued + len(running), "job_timestamp": "0", "job_no": 0,
                          "sampling_step": p.step, "sampling_steps": p.steps}}

    return api


def controlnet_router(service: Any) -> APIRouter:
    """sd-webui-controlnet's routes: the ControlNets (by name), the preprocessors, the API version."""
    api = APIRouter(prefix="/controlnet")

    @api.get("/model_list")
    async def model_list() -> dict[str, list[str]]:
        return {"model_list": service.controlnets.names()}

    @api.get("/module_list")
    async def module_list() -> dict[str, Any]:
        from sdrt.runtime.preprocessors import module_list as names

        return {"module_list": names(), "module_detail": {}}

    @api.get("/version")
    async def version() -> dict[str, int]:
        return {"version": controlnets.API_VERSION}

    return api
