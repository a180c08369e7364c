"""New weights for an OpenVINO model (LoRA, sdrt.runtime.lora): replace the Constants that hold the initializers.

OpenVINO's ONNX frontend turns every initializer into a ``Constant`` op named after it (friendly
name and tensor name). `replace_constants` swaps, in the ``ov.Model`` that ``read_model`` gave and
before ``compile_model`` runs its transformations, each overridden initializer's Constant for a new
one wrapping the merged numpy array (shared memory: the caller keeps the array alive); the plugin
then folds and repacks the new values as it would the file's. A name that is not a Constant of the
model, or a shape that differs, is a one-line error: the weight map and the file disagree.

This is the merged path, for LoRAs the side paths (sdrt.engines.openvino_lora) cannot carry (3x3
convolutions, static shapes): a switch costs one compile without the cache.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from sdrt.errors import SdrtError


def replace_constants(ov: Any, model: Any, overrides: Mapping[str, np.ndarray], where: str) -> int:
    """Swap the Constant of each initializer in `overrides` for one holding the new array; returns how many."""
    if not overrides:
        return 0
    constants = {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Constant"}
    for name, array in overrides.items():
        old = constants.get(name)
        if old is None:
            raise SdrtError(f"{where}: initializer {name} (from the weight map) is not a constant of the OpenVINO "
                            f"model: re-export with sdrt export --force")
        old_shape = tuple(old.get_shape())
        grown_table = len(old_shape) == 2 and old_shape[1:] == array.shape[1:] and array.shape[0] > old_shape[0]
        if old_shape != tuple(array.shape) and not grown_table:  # a table may gain rows (textual inversion)
            raise SdrtError(f"{where}: initializer {name} has shape {tuple(old.get_shape())} in the OpenVINO "
                            f"model, the merged weight {tuple(array.shape)}: re-export with sdrt export --force")
        new = ov.op.Constant(np.ascontiguousarray(array), shared_memory=True)
        if new.get_element_type() != old.get_element_type():
            raise SdrtError(f"{where}: initializer {name} is {old.get_element_type()} in the OpenVINO model, the "
                            f"merged weight {array.dtype}: re-export with sdrt export --force")
        new.set_friendly_name(name)
        new.output(0).set_names(old.output(0).get_names())
        old.output(0).replace(new.output(0))
    return len(overrides)
