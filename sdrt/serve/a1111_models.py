"""The A1111 API's request and answer bodies: its field names and defaults, what `/openapi.json` publishes.

Numbers must be finite (`NaN` and infinities are a 422 before anything runs). Fields this server has
no feature for are accepted at the web UI's default value and refused when they ask for the feature
(`sdrt.serve.a1111.UNSUPPORTED`); any other field is echoed back in `parameters`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FINITE = ConfigDict(extra="allow", allow_inf_nan=False)


class Txt2ImgRequest(BaseModel):
    """A1111's StableDiffusionTxt2ImgProcessingAPI (the fields sdrt reads; any other is echoed back)."""

    model_config = FINITE

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list, description="names of the server's --styles file")
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0, description="variation strength, 0..1")
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    steps: int = Field(50, ge=1, description="the server's --max-steps is the upper bound")
    cfg_scale: float = Field(7.0, ge=0.0)
    width: int = Field(512, ge=8, description="a multiple of the model's size step; width x height up to --max-pixels")
    height: int = Field(512, ge=8)
    denoising_strength: float | None = Field(None, ge=0.0, le=1.0, description="the hires pass's (txt2img)")
    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=1.0, le=8.0)
    hr_upscaler: str | None = Field(None, description="GET /sdapi/v1/upscalers and /latent-upscale-modes")
    hr_second_pass_steps: int = Field(0, ge=0)
    hr_resize_x: int = Field(0, ge=0)
    hr_resize_y: int = Field(0, ge=0)
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    override_settings: dict[str, Any] = Field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    save_images: bool = False
    restore_faces: bool | None = False
    tiling: bool | None = False
    script_name: str | None = None
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)


class Img2ImgRequest(Txt2ImgRequest):
    """A1111's StableDiffusionImg2ImgProcessingAPI: init images, mask, denoising strength."""

    init_images: list[str] = Field(default_factory=list)
    mask: str | None = None
    denoising_strength: float = 0.75
    resize_mode: int = 0
    inpainting_mask_invert: int = 0
    include_init_images: bool = False


class ImageAnswer(BaseModel):
    """txt2img / img2img: base64 PNGs (with their infotext), the request as understood, the info JSON."""

    images: list[str]
    parameters: dict[str, Any]
    info: str


class PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(description="base64 PNG (or a data: URL)")


class PngInfoAnswer(BaseModel):
    info: str = Field(description="the image's A1111 infotext ('' when it has none)")
    items: dict[str, Any] = Field(description="its other text chunks")
    parameters: dict[str, Any] = Field(description="the infotext read into fields, as the web UI reads it")
