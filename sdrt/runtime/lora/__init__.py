"""LoRA adapters at run time: read the files, merge them in numpy, hand the weights to the engines.

`Adapters` is what a Pipeline holds: `set(pairs)` reads, checks and merges every (file, scale) pair,
then swaps the text encoder's and the UNet's weights through the backend (`Backend.reweight`),
never re-exporting. An empty list restores the exported weights exactly.
"""

from sdrt.runtime.lora.adapters import Adapters, ActiveLora, parse_lora_arg

__all__ = ["Adapters", "ActiveLora", "parse_lora_arg"]
