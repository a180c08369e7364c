"""What one request may ask of the service, and the checks that hold requests to it.

Every check raises `RequestRejected` with the HTTP status to answer and a one-line message that
says what to send instead. Images arrive as base64 (A1111's `init_images`, `mask`): they are
size-checked before decoding, their pixel count is read from the header before the pixels are
(no decompression bomb is ever expanded), and only PNG, JPEG and WebP are opened.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

from sdrt.errors import SdrtError

#: image formats a request may carry
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")


class RequestRejected(SdrtError):
    """A request the service will not run: `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Per-request ceilings (the `sdrt serve` options of the same names)."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 1536 * 1536
    max_steps: int = 150
    max_images: int = 8
    max_prompt_chars: int = 4000
    max_image_bytes: int = 16 * 1024 * 1024

    def check_size(self, width: int, height: int) -> None:
        if width < 8 or height < 8:
            raise RequestRejected(f"size {width}x{height} is too small: use at least 8x8 (a multiple of 8)")
        if width * height > self.max_pixels:
            raise RequestRejected(f"size {width}x{height} is {width * height} pixels, over this server's limit "
                                  f"of {self.max_pixels}: ask for a smaller image", 413)

    def check_model_size(self, pipe: object, width: int, height: int) -> None:
        """The model's own size rule (Flux: multiples of 16 px), before the request is queued."""
        sizes = getattr(getattr(pipe, "manifest", None), "sizes", None)
        if sizes is None:
            return
        try:
            sizes.check_image_size(height, width)
        except SdrtError as e:
            raise RequestRejected(str(e), 422) from None

    def check_steps(self, steps: int) -> None:
        if not 1 <= steps <= self.max_steps:
            raise RequestRejected(f"steps {steps} is outside 1..{self.max_steps}: ask for fewer steps")

    def check_images(self, n: int) -> None:
        if not 1 <= n <= self.max_images:
            raise RequestRejected(f"{n} images requested; this server makes 1..{self.max_images} per request: "
                                  f"split the request")

    def check_prompt(self, text: str, label: str = "prompt") -> None:
        if len(text) > self.max_prompt_chars:
            raise RequestRejected(f"{label} has {len(text)} characters, over this server's limit of "
                                  f"{self.max_prompt_chars}: shorten it", 413)

    def decode_image(self, data: str, label: str):
        """A base64 image (optionally a `data:image/...;base64,` URL) -> a loaded PIL image."""
        from PIL import Image, UnidentifiedImageError

        if not isinstance(data, str) or not data:
            raise RequestRejected(f"{label} must be a base64-encoded PNG, JPEG or WebP string")
        if data.startswith("data:"):
            data = data.split(",", 1)[-1]
        if len(data) > self.max_image_bytes * 4 // 3 + 4:
            raise RequestRejected(f"{label} is over this server's limit of {self.max_image_bytes} bytes: "
                                  f"send a smaller image", 413)
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise RequestRejected(f"{label} is not valid base64: send the image file's bytes base64-encoded") from None
        try:
            image = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)  # reads the header only
        except Image.DecompressionBombError:
            raise RequestRejected(f"{label} declares far more pixels than this server's limit of "
                                  f"{self.max_pixels} (a decompression bomb?): send a smaller image", 413) from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise RequestRejected(f"{label} is not a readable PNG, JPEG or WebP image") from None
        width, height = image.size
        if width * height > self.max_pixels:
            raise RequestRejected(f"{label} is {width}x{height} pixels, over this server's limit of "
                                  f"{self.max_pixels}: send a smaller image", 413)
        try:
            image.load()
        except (OSError, ValueError, Image.DecompressionBombError):
            raise RequestRejected(f"{label} is a damaged or truncated image") from None
        return image
