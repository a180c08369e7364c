"""LoRAs in `sdrt serve`: AUTOMATIC1111's `<lora:NAME:SCALE>` prompt tags, looked up by name in --lora-dir.

A request names LoRAs, never files: NAME must be a plain name (no `/`, `\\`, `..`, no leading dot)
of a `NAME.safetensors` directly in the server's --lora-dir, else 400; no answer ever shows a
server path. The tags are parsed by the runtime's own parser (sdrt.runtime.lora.adapters) and taken
out of the prompt, as `sdrt generate --lora-dir` does; the request then carries the (file, scale)
pairs, which are part of its batch key (requests with different LoRAs never share a UNet batch),
and the model's worker switches the pipeline to them before the batch (`use_loras`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from sdrt.errors import SdrtError
from sdrt.serve.limits import RequestRejected

log = logging.getLogger("sdrt.serve")

SUFFIX = ".safetensors"


class LoraSwitchFailed(SdrtError):
    """A LoRA file could not be applied (unreadable, not a LoRA, does not fit the model)."""

    def __init__(self, names: list[str], cause: SdrtError):
        super().__init__(str(cause))
        self.names = names


def check_name(name: str) -> None:
    if (not name or len(name) > 200 or "/" in name or "\\" in name or ".." in name or name.startswith(".")
            or any(ord(c) < 32 for c in name)):
        raise RequestRejected(f"<lora:{name[:60]}> is not a LoRA name: a request names a LoRA of this server "
                              f"(GET /sdapi/v1/loras lists them), never a path")


class LoraCatalog:
    """The LoRA files this server may apply: NAME.safetensors directly in `folder` (None: no LoRAs)."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder).resolve() if folder is not None else None
        if self.folder is not None and not self.folder.is_dir():
            raise SdrtError(f"--lora-dir {folder} is not a folder: pass the folder holding NAME.safetensors files")

    def names(self) -> list[str]:
        if self.folder is None:
            return []
        return sorted(p.name[:-len(SUFFIX)] for p in self.folder.glob(f"*{SUFFIX}")
                      if p.is_file() and not p.name.startswith("."))

    def listing(self) -> list[dict[str, Any]]:
        """A1111's GET /sdapi/v1/loras entries, without the files' paths."""
        return [{"name": name, "alias": name, "path": None, "metadata": {}} for name in self.names()]

    def resolve(self, prompt: str) -> tuple[str, tuple[tuple[str, float], ...]]:
        """(the prompt without its tags, ((file, scale), ...)); a prompt without tags comes back unchanged."""
        from sdrt.runtime.lora.adapters import prompt_tags

        try:
            text, tags = prompt_tags(prompt)
        except RequestRejected:
            raise
        except SdrtError as e:  # a scale that is not a number: the message names only the tag
            raise RequestRejected(str(e)) from None
        if not tags:
            return prompt, ()
        pairs = []
        for name, scale in tags:
            check_name(name)
            if self.folder is None:
                raise RequestRejected(f"<lora:{name}>: this server has no LoRAs (it was started without --lora-dir)")
            path = self.folder / f"{name}{SUFFIX}"
            if not path.is_file():
                raise RequestRejected(f"<lora:{name}>: this server has no LoRA named {name!r} "
                                      f"(GET /sdapi/v1/loras lists them)")
            pairs.append((str(path), scale))
        return text, tuple(pairs)


def use_loras(pipe: Any, loras: Sequence[tuple[str, float]]) -> None:
    """Switch `pipe` to exactly these (file, scale) pairs, only when they differ from what it has."""
    wanted = [(str(path), float(scale)) for path, scale in loras]
    current = [(lora["path"], lora["scale"]) for lora in getattr(pipe, "loras", None) or []]
    if wanted == current:
        return
    try:
        pipe.set_loras(wanted)
    except SdrtError as e:
        raise LoraSwitchFailed([Path(path).name[:-len(SUFFIX)] for path, _ in wanted], e) from e


def rejection(e: LoraSwitchFailed) -> RequestRejected:
    """What a client hears when a server's LoRA file cannot be applied: its name, not the server's paths."""
    log.error("LoRA %s could not be applied: %s", ", ".join(e.names), e)
    return RequestRejected(f"LoRA {', '.join(e.names)} could not be applied on this server (its log says why): "
                           f"ask without it", 500)
