"""Low-memory mode: the text encoders and the denoiser are never in memory at the same time.

A model whose engines together exceed the machine's memory (SD3.5 Medium with T5-XXL on 24 GB: the
three text encoders take 12.8 GB, the transformer 9 GB) still runs if each call loads the text
encoders, encodes, closes them, then loads the denoiser (and the other way round on the next call).
The VAE stays loaded (small). A call then pays the engines' load times; images are bit for bit those
of a pipeline holding everything (the same engines, the same inputs).

`decide` turns the `low_memory` option into a yes/no: "auto" (the default) says yes when the
components' bytes (what their engines hold, about: fp32 weights folded or 16-bit ones kept) exceed
`SHARE` of the memory available now (MemAvailable), and says so on stderr.
"""

from __future__ import annotations

import sys
from typing import Any

from sdrt.errors import SdrtError
from sdrt.runtime.memory_guard import available_bytes

NO_LORA = ("LoRAs need the text encoders and the denoiser loaded together, and this pipeline runs in low-memory mode "
           "(they do not fit the memory available together): pass low_memory=\"off\" (--low-memory off) on a "
           "machine with more memory, or generate without LoRAs")
#: "auto" turns low-memory mode on above this share of the available memory
SHARE = 0.8
MODES = ("auto", "on", "off")


def engine_bytes(manifest: Any, components: Any) -> int:
    return sum(int(manifest.components.get(c, {}).get("bytes") or 0) for c in components)


def decide(manifest: Any, mode: bool | str | None) -> bool:
    """`low_memory` -> on or off (True/False or "on"/"off" as given; "auto"/None by the sizes)."""
    if isinstance(mode, bool):
        return mode
    mode = "auto" if mode is None else str(mode).lower()
    if mode not in MODES:
        raise SdrtError(f"low_memory {mode!r} is not one of {', '.join(MODES)}")
    if mode != "auto":
        return mode == "on"
    spec = manifest.spec
    needed = engine_bytes(manifest, (*spec.text_encoders, spec.family.denoiser, "vae_decoder"))
    available = available_bytes()
    if available is None or needed <= SHARE * available:
        return False
    print(f"sdrt: low-memory mode: the engines take {needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB is "
          f"available; the text encoders and the {spec.family.denoiser} are loaded in turn "
          f"(--low-memory off to load them all)", file=sys.stderr, flush=True)
    return True


def groups(pipe: Any) -> list[tuple[str, ...]]:
    """The engines that take turns: the text encoders, the denoiser."""
    return [tuple(pipe.model_spec.text_encoders), (pipe.denoiser,)]


def make_room(pipe: Any, component: str) -> None:
    """Before `component`'s engine loads: close the engines of the other group."""
    for group in groups(pipe):
        if component in group:
            continue
        for name in group:
            engine = pipe.engines.pop(name, None)
            if engine is not None:
                engine.close()
