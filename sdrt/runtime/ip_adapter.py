"""IP-Adapter in the torch-free pipeline: an image as a prompt, as diffusers' IP-Adapter pipelines do it.

`IPAdapter.load(base, backend, folder)` opens an exported IP-Adapter folder (`sdrt export` of a
diffusers `load_ip_adapter` folder) on the pipeline's backend; the base's UNet is then the graph
that takes the IP-Adapter's keys and values (`sdrt.ip_graph`, made from the export without
re-export). Once per call (`bind`):

- the image is preprocessed as diffusers' default ``CLIPImageProcessor`` (transformers' PIL
  backend): RGB, the shortest side resized to the encoder's size (bicubic), centre-cropped, scaled
  to [0, 1], normalised with CLIP's mean and std;
- the image encoder gives its embedding; the unconditional half under guidance gets zeros (diffusers'
  ``encode_image``), every image of the call the same embedding;
- the projection gives every cross-attention layer's keys and values, the values times the scale
  (`set_ip_adapter_scale`; ``scale * attention(q, k, v) = attention(q, k, scale * v)``), bound to the
  UNet for the whole loop: the IP-Adapter costs nothing per step beyond the UNet's extra attention.

A call without ``ip_adapter_image`` binds zero values (the base alone; diffusers refuses such a call).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdrt.engines.base import Backend, Engine
from sdrt.errors import SdrtError
from sdrt.manifest import IP_ADAPTER_KIND, Manifest, load_kind
from sdrt.runtime import images as imageio
from sdrt.spec import IPAdapterLayout
from sdrt.spec.ip_adapter import IMAGE_EMBEDS, PIXEL_VALUES

#: transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD (what CLIPImageProcessor normalises with)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def open_ip_adapter(folder: str | os.PathLike) -> Manifest:
    """An IP-Adapter folder's manifest; anything else is one line."""
    return load_kind(folder, IP_ADAPTER_KIND, lambda manifest: (
        f"{folder} is a {manifest.kind} folder, not an IP-Adapter: export a diffusers IP-Adapter folder "
        f"(ip-adapter_sd15.safetensors + image_encoder/) with `sdrt export --model IP_DIR --out DIR`"))


def check_fits(base: Manifest, ip_adapter: Manifest) -> IPAdapterLayout:
    """The IP-Adapter's layout, or one line naming why it does not fit `base` (the layers are checked
    against the UNet graph when it is rewritten)."""
    layout = ip_adapter.ip_adapter_layout()
    if int(base.pipeline["text_hidden_size"]) != layout.cross_attention_dim:
        raise SdrtError(f"the IP-Adapter {ip_adapter.folder} has cross-attention width {layout.cross_attention_dim}, the "
                        f"base {base.folder} has {base.pipeline['text_hidden_size']}: use an IP-Adapter made for this "
                        f"base (e.g. ip-adapter_sd15 for SD 1.x, ip-adapter_sdxl for SDXL)")
    return layout


def clip_pixels(picture: Image.Image, size: int) -> np.ndarray:
    """[1, 3, size, size] float32: diffusers' default CLIPImageProcessor (PIL backend) on one image."""
    picture = picture.convert("RGB")
    w, h = picture.size
    short, long = (w, h) if w <= h else (h, w)
    scaled_long = int(size * long / short)
    new = (size, scaled_long) if w <= h else (scaled_long, size)
    if new != picture.size:
        picture = picture.resize(new, Image.BICUBIC)
    array = np.asarray(picture, dtype=np.uint8)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    array = array[top:top + size, left:left + size]
    pixels = (array.astype(np.float64) * (1 / 255)).astype(np.float32)
    pixels = (pixels - CLIP_MEAN) / CLIP_STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], dtype=np.float32)


class IPAdapter:
    """One exported IP-Adapter on the pipeline's backend, with its scale."""

    def __init__(self, path: Path, manifest: Manifest, encoder: Engine, projection: Engine, family: str = "sd"):
        self.path, self.manifest, self.encoder, self.projection = path, manifest, encoder, projection
        self.layout = manifest.ip_adapter_layout()
        self.scale = 1.0
        self.family = family  # the base's (what the PNG metadata's module name follows)

    @classmethod
    def load(cls, manifest: Manifest, backend: Backend, folder: str | os.PathLike, family: str = "sd") -> "IPAdapter":
        encoder = backend.load(manifest, "image_encoder")
        try:
            projection = backend.load(manifest, "image_proj")
        except BaseException:
            encoder.close()
            raise
        return cls(Path(folder), manifest, encoder, projection, family)

    @property
    def name(self) -> str:
        """What the PNG metadata calls it: its source folder's name, else its own."""
        return (self.manifest.data.get("source") or {}).get("name") or self.path.name

    def set_scale(self, scale: Any) -> None:
        try:
            value = float(scale)
        except (TypeError, ValueError):
            raise SdrtError(f"IP-Adapter scale {scale!r} is not a number: use one value such as 0.6 (per-block "
                            f"scales are not supported)") from None
        if isinstance(scale, bool) or not np.isfinite(value):
            raise SdrtError(f"IP-Adapter scale {scale!r} is not a finite number: use e.g. 0.6")
        self.scale = value

    def describe(self) -> dict[str, Any]:
        """What the PNG metadata records (the module: sd-webui-controlnet's name of the CLIP preprocessor)."""
        module = "ip-adapter_clip_sdxl" if self.family == "sdxl" else "ip-adapter_clip_sd15"
        return {"model": self.name, "scale": self.scale, "module": module}

    @staticmethod
    def picture(image: Any) -> Image.Image:
        """Step 1: the call's ip_adapter_image (a PIL image, an array or a path), loaded; else one line."""
        pictures = imageio.load_images(image, "ip_adapter_image")
        if len(pictures) != 1:
            raise SdrtError(f"{len(pictures)} IP-Adapter images: pass one ip_adapter_image (sdrt loads one IP-Adapter)")
        return pictures[0]

    def embeds(self, picture: Image.Image) -> np.ndarray:
        """The image encoder's embedding of one image ([1, E])."""
        pixels = clip_pixels(picture, self.layout.image_size)
        self.encoder.prepare({"B": 1})
        return np.asarray(self.encoder.run({PIXEL_VALUES: pixels})[IMAGE_EMBEDS], dtype=np.float32)

    def bind(self, unet: Engine, embeds: np.ndarray | None, *, images: int, guidance: bool) -> None:
        """Bind the UNet's IP-Adapter inputs for a call of `images` images (`embeds` None: zero values)."""
        rows = 2 * images if guidance else images
        if embeds is None:
            for tensor in self.layout.unet_tensors():
                unet.set_input(tensor.name, np.zeros((rows, *tensor.shape[1:]), dtype=np.float32))
            return
        cond = np.repeat(embeds, images, axis=0)
        batch = np.concatenate([np.zeros_like(cond), cond]) if guidance else cond
        self.projection.prepare({"B": rows})
        out = self.projection.run({IMAGE_EMBEDS: np.ascontiguousarray(batch, dtype=np.float32)})
        for k in range(len(self.layout.widths)):
            key, value = self.layout.names[2 * k], self.layout.names[2 * k + 1]
            unet.set_input(key, np.array(out[key], dtype=np.float32))
            unet.set_input(value, np.asarray(out[value], dtype=np.float32) * np.float32(self.scale))

    def close(self) -> None:
        self.encoder.close()
        self.projection.close()


def switch(pipe: Any, folder: str | os.PathLike) -> None:
    """`Pipeline.set_ip_adapter`'s work: run with the IP-Adapter in `folder` from now on. The same folder is
    a no-op; another one of the same layout reuses the UNet graph; the first one makes the UNet the graph
    that takes its keys and values (sdrt.ip_graph; refused while LoRAs are merged into the UNet)."""
    from sdrt.ip_graph import ip_manifest

    current = pipe.ip_adapter
    if current is not None and current.path.resolve() == Path(folder).resolve():
        return
    manifest = open_ip_adapter(folder)
    derived = ip_manifest(pipe.manifest, check_fits(pipe.manifest, manifest))  # another layout: one line
    if derived is not pipe.manifest and pipe.adapters.active:
        raise SdrtError("load the IP-Adapter before LoRAs (Pipeline.load(..., ip_adapter=...)), or clear the LoRAs "
                        "first: the UNet is reloaded for an IP-Adapter")
    adapter = IPAdapter.load(manifest, pipe.backend, folder, pipe.family)
    if derived is not pipe.manifest:
        if pipe.denoiser in pipe.engines:  # (low memory: loaded on its next use)
            try:
                engine = pipe.backend.load(derived, pipe.denoiser)  # fails before the old one is closed
            except BaseException:
                adapter.close()
                raise
            pipe.engines.pop(pipe.denoiser).close()
            pipe.engines[pipe.denoiser] = engine
        pipe.manifest, pipe.model_spec = derived, derived.spec
        from sdrt.runtime.lora import Adapters

        pipe.adapters = Adapters(derived)  # later LoRAs merge into the new graph (none are merged now)
    if current is not None:
        current.close()
    pipe.ip_adapter = adapter
