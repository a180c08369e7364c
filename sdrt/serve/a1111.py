"""AUTOMATIC1111-compatible routes (`/sdapi/v1/...`): the fields and answers that web UI's API defines.

Requests carry A1111's field names and defaults (`sdrt.serve.a1111_models`); fields this server has
no feature for are accepted when they hold A1111's default value and refused (400, naming the field)
when they ask for the feature (face restoration, tiling, scripts). Prompts are read in A1111's syntax
(emphasis, BREAK, 77-token chunks; the `prompt_syntax` setting turns it off), `styles` come from the
server's --styles file, `override_settings` take the settings of `sdrt.serve.settings`, and the hires
fix (`enable_hr`, `hr_*`) and variation seeds (`subseed`, `subseed_strength`, `seed_resize_from_*`)
run as the runtime's. Answers are A1111's: `images` (base64 PNG, each with its "parameters" text
chunk), `parameters` (the request as understood) and `info` (a JSON string: seeds, prompts, sampler,
infotexts...). `<lora:NAME:SCALE>` tags pick LoRAs of the server's --lora-dir by name
(sdrt.serve.loras). The other routes (options, png-info, interrupt...) are `sdrt.serve.a1111_extras`.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image

from sdrt.errors import SdrtError
from sdrt.runtime.infotext import a1111_parameters, controlnet_unit, hires_fields
from sdrt.serve import controlnets, samplers
from sdrt.serve.a1111_models import ImageAnswer, Img2ImgRequest, Txt2ImgRequest
from sdrt.serve.access_log import note
from sdrt.serve.dispatch import png_base64, run_job
from sdrt.serve.limits import RequestRejected
from sdrt.serve.queueing import GenerationRequest, distilled_guidance
from sdrt.serve.settings import OWN_VAE, SYNTAXES

#: fields whose non-default value asks for a feature this server does not have
UNSUPPORTED = {"restore_faces": False, "tiling": False, "script_name": None, "alwayson_scripts": {}}


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


def flux_guidance(body: Txt2ImgRequest, request: GenerationRequest) -> None:
    """Forge's fields for Flux: `distilled_cfg_scale` is the embedded guidance of a dev-style model (default:
    the pipeline's, 3.5); `cfg_scale` > 1 is true classifier-free guidance, run only with a non-empty
    negative prompt (A1111 clients send cfg_scale 7 and an empty negative by default: that stays off)."""
    distilled = (body.model_extra or {}).get("distilled_cfg_scale")
    if distilled is not None and not isinstance(distilled, (int, float)):
        raise RequestRejected(f"distilled_cfg_scale {distilled!r} is not a number")
    request.guidance_scale = None if distilled is None else float(distilled)
    request.true_cfg_scale = float(body.cfg_scale) if body.negative_prompt.strip() and body.cfg_scale > 1 else 1.0


def _seed(value: int | None) -> int:
    return secrets.randbits(32) if value is None or value < 0 else value % 2**32


def _hires(body: Txt2ImgRequest, service: Any, model: str) -> Any:
    """The request's hires fix (None without enable_hr), checked against the model and the server's limits."""
    if not body.enable_hr or isinstance(body, Img2ImgRequest):
        return None
    from sdrt.runtime.hires import HiresFix, check, plan

    hires = HiresFix(
        scale=body.hr_scale, resize_x=body.hr_resize_x, resize_y=body.hr_resize_y,
        upscaler=body.hr_upscaler or "Latent", steps=body.hr_second_pass_steps,
        denoising_strength=0.7 if body.denoising_strength is None else body.denoising_strength,
        scheduler=samplers.resolve(body.hr_sampler_name, body.hr_scheduler) if body.hr_sampler_name else None,
        prompt=body.hr_prompt or None, negative_prompt=body.hr_negative_prompt or None)
    try:
        check(hires)
    except SdrtError as e:
        raise RequestRejected(str(e)) from None
    manifest = getattr(service.pipelines[model], "manifest", None)
    multiple = manifest.sizes.image_multiple if hasattr(manifest, "sizes") else 8
    target = plan(hires, body.width, body.height, multiple)
    service.limits.check_size(*target.upscale)  # the hires pass's size is held to --max-pixels too
    return hires


def _text_chunks(pipe: Any, syntax: str | None, texts: tuple[str, ...]) -> int:
    """How many 77-token chunks the request's texts need on this model (1 without A1111's syntax)."""
    tokenizers = getattr(pipe, "tokenizers", None)
    if syntax != "a1111" or not tokenizers:
        return 1
    from sdrt.runtime.prompt_chunks import Chunker

    return max(len(Chunker(t).chunks(text)) for t in tokenizers.values() for text in texts)


def to_generation(body: Txt2ImgRequest, service: Any) -> GenerationRequest:
    limits = service.limits
    _check_supported(body)
    settings = service.options.for_request(body.override_settings)
    model = settings["sd_model_checkpoint"]
    prompt, negative = service.styles.apply(body.styles, body.prompt, body.negative_prompt)
    limits.check_prompt(prompt)
    limits.check_prompt(negative, "negative_prompt")
    limits.check_size(body.width, body.height)
    limits.check_steps(body.steps)
    if body.hr_second_pass_steps:
        limits.check_steps(body.hr_second_pass_steps)
    if body.batch_size < 1 or body.n_iter < 1:
        raise RequestRejected("batch_size and n_iter must be >= 1")
    limits.check_images(body.batch_size * body.n_iter)
    if not 0.0 <= body.subseed_strength <= 1.0:
        raise RequestRejected(f"subseed_strength {body.subseed_strength} is outside 0..1")
    resize = (body.seed_resize_from_h, body.seed_resize_from_w)
    if min(resize) > 0:
        limits.check_size(resize[1], resize[0])
    prompt, loras = service.loras.resolve(prompt)  # <lora:NAME:SCALE> tags: names of --lora-dir files only
    syntax = SYNTAXES[settings["prompt_syntax"]]
    if syntax not in getattr(service.pipelines[model], "prompt_syntaxes", (None,)):
        syntax = None  # a family whose prompts sdrt reads only diffusers' way (SD3 today)
    flow = samplers.flow_model(service.pipelines[model])  # SD3 / Flux take the flow-matching samplers
    request = GenerationRequest(
        model=model, prompt=prompt, negative_prompt=negative, n=body.batch_size * body.n_iter,
        width=body.width, height=body.height, steps=body.steps,
        sampler=samplers.resolve(body.sampler_name or body.sampler_index, body.scheduler, flow=flow),
        guidance_scale=body.cfg_scale, seed=_seed(body.seed), loras=loras, syntax=syntax,
        text_chunks=_text_chunks(service.pipelines[model], syntax, (prompt, negative)),
        clip_skip=settings["CLIP_stop_at_last_layers"] - 1 or None,
        subseed=_seed(body.subseed), subseed_strength=body.subseed_strength,
        seed_resize=resize if min(resize) > 0 else None, hires=_hires(body, service, model),
        vae=None if settings["sd_vae"] in OWN_VAE else (settings["sd_vae"], str(service.vaes[settings["sd_vae"]])))
    if distilled_guidance(service.pipelines[request.model]):  # Flux: its 16 px rule before queueing (422)
        limits.check_model_size(service.pipelines[request.model], body.width, body.height)
        flux_guidance(body, request)
    units = controlnets.scripts_units(body.alwayson_scripts)
    if units:
        request.controlnets, request.ip_adapter = controlnets.parse_units(
            units, service.controlnets, limits, width=body.width, height=body.height, pipe=service.pipelines[model])
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
    extra: dict[str, Any] = {"Backend": params["backend"]}
    if distilled_guidance(service.pipelines[request.model]):  # Flux: as Forge's infotexts say
        extra["Distilled CFG Scale"] = params["guidance_scale"]
    for i, unit in enumerate(params.get("controlnets", [])):
        extra[f"ControlNet {i}"] = controlnet_unit(unit)
    if params.get("loras"):  # as A1111 writes them (name: short hash), never the server's paths
        extra["Lora hashes"] = ", ".join(f"{lora['name']}: {lora['hash']}" for lora in params["loras"])
    extra.update(hires_fields(params.get("hires")))
    varied = request.subseed_strength > 0
    prompt = request.prompt if body.styles else body.prompt  # A1111 keeps the <lora:...> tags here
    strength = request.strength if request.init_image else params.get("strength")
    info = {
        "prompt": prompt, "all_prompts": [prompt] * n,
        "negative_prompt": request.negative_prompt, "all_negative_prompts": [request.negative_prompt] * n,
        "seed": request.seed, "all_seeds": result.seeds, "subseed": request.subseed if varied else -1,
        "all_subseeds": request.subseeds if varied else [-1] * n, "subseed_strength": request.subseed_strength,
        "seed_resize_from_w": request.seed_resize[1] if request.seed_resize else -1,
        "seed_resize_from_h": request.seed_resize[0] if request.seed_resize else -1,
        "width": request.width, "height": request.height, "sampler_name": sampler,
        "scheduler": params.get("schedule_type") or body.scheduler or "Automatic", "cfg_scale": body.cfg_scale,
        "steps": request.steps,
        "batch_size": body.batch_size, "restore_faces": False, "sd_model_name": request.model,
        "sd_model_hash": params.get("model_hash"), "sd_vae_name": request.vae[0] if request.vae else None, "denoising_strength": strength,
        "extra_generation_params": extra, "index_of_first_image": 0,
        "infotexts": infotexts, "styles": list(body.styles), "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": (request.clip_skip or 0) + 1, "is_using_inpainting_conditioning": False,
        "interrupted": bool(params.get("interrupted")), "version": "sdrt",
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

    @api.post("/txt2img", response_model=ImageAnswer)
    async def txt2img(body: Txt2ImgRequest, http_request: Request) -> dict[str, Any]:
        return await generate(body, http_request)

    @api.post("/img2img", response_model=ImageAnswer)
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
        stopping = any(w.interrupt.is_set() for w in service.workers.values())
        return {"progress": fraction, "eta_relative": eta, "current_image": None, "textinfo": None,
                "state": {"skipped": False, "interrupted": stopping, "job": f"job {p.job_ids[0]}",
                          "job_count": queued + len(running), "job_timestamp": "0", "job_no": 0,
                          "sampling_step": p.step, "sampling_steps": p.steps}}

    from sdrt.serve import a1111_extras

    a1111_extras.add_routes(api, service)
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

        return {"module_list": names() + list(controlnets.IP_MODULES[:2]), "module_detail": {}}

    @api.get("/version")
    async def version() -> dict[str, int]:
        return {"version": controlnets.API_VERSION}

    return api
