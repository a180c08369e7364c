"""ControlNet residuals: what a ControlNet gives and what a UNet that takes them adds to its skip tensors.

A UNet's down path keeps one skip tensor per resnet and per downsampler (plus ``conv_in``'s output);
a ControlNet of the same architecture gives one residual per skip tensor, and one for the mid block.
Their number and channels depend on the UNet's config, so a model records its `Residuals` layout in
the manifest (``pipeline.residuals``): per down-block residual its channels and how many times the
latent was halved to reach it, then the same for the mid block. The tensors are::

    down_block_residual_<i>   [B, channels_i, h/2^k_i, w/2^k_i]   (rounded up, as stride-2 convs do)
    mid_block_residual        [B, channels, h/2^k, w/2^k]

A ControlNet fits a UNet exactly when their layouts are equal. Pure Python, like the rest of the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdrt.errors import SdrtError
from sdrt.spec.tensors import FLOAT, N, TensorSpec


def _side(symbol: str, factor: int) -> str:
    return symbol if factor == 1 else f"{symbol}/{factor}"


@dataclass(frozen=True)
class Residuals:
    """The residual layout of a UNet or a ControlNet: (channels, downscale factor) per tensor."""

    down: tuple[tuple[int, int], ...]
    mid: tuple[int, int]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(N.down_block_residual(i) for i in range(len(self.down))) + (N.MID_BLOCK_RESIDUAL,)

    @property
    def count(self) -> int:
        """Residual tensors in all (the down blocks' and the mid block's)."""
        return len(self.down) + 1

    def tensors(self) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(name, FLOAT, ("B", channels, _side("h", factor), _side("w", factor)))
                     for name, (channels, factor) in zip(self.names, (*self.down, self.mid)))

    def to_json(self) -> dict[str, Any]:
        return {"down": [list(entry) for entry in self.down], "mid": list(self.mid)}

    @classmethod
    def from_json(cls, data: Any, where: str = "pipeline.residuals") -> "Residuals":
        """The layout a manifest records; anything else is one line naming `where`."""
        def pair(item: Any) -> tuple[int, int]:
            if (not isinstance(item, (list, tuple)) or len(item) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in item)):
                raise SdrtError(f"{where} holds {item!r}, not a [channels, downscale] pair: export the model "
                                f"again with --force")
            return int(item[0]), int(item[1])

        if not isinstance(data, dict) or not isinstance(data.get("down"), list) or "mid" not in data:
            raise SdrtError(f"{where} is not a residual layout ({{'down': [...], 'mid': [...]}}): export the "
                            f"model again with --force")
        return cls(tuple(pair(item) for item in data["down"]), pair(data["mid"]))

    def describe(self) -> str:
        """In words, for the error that says two layouts differ."""
        channels = sorted({c for c, _ in self.down})
        return (f"{len(self.down)} down-block residuals of {'/'.join(map(str, channels))} channels, "
                f"mid block {self.mid[0]} channels at 1/{self.mid[1]}")
