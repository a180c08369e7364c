"""Read PyTorch's saved tensors (`torch.save`: .pt, .bin) without torch, and without running the file's code.

A `torch.save` file is a zip archive: `*/data.pkl` pickles the object, and each tensor's bytes are a
file `*/data/<key>`. This reader unpickles with a closed list of what it may build (dicts, lists,
tuples, OrderedDict, PyTorch's tensor-rebuild call and storage types): any other global in the
pickle (a class, a function: what a malicious file calls) is refused in one line, nothing is executed.
Tensors come back as numpy arrays. The legacy (pre-1.6, non-zip) format is refused.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from sdrt.errors import SdrtError

#: PyTorch storage class -> numpy dtype
STORAGES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    if not size:
        return storage[offset:offset + 1].reshape(())
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride)).copy()


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, where: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.where = archive, prefix, where

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":  # nn.Parameter: its data
            return lambda data, *_: data
        if module == "torch" and name in STORAGES:
            return name
        raise SdrtError(f"{self.where} holds {module}.{name}, which is not a tensor or a container: sdrt reads only "
                        f"tensors from pickle files (convert it to .safetensors)")

    def persistent_load(self, pid: Any) -> np.ndarray:
        _, storage_type, key, _location, _numel = pid
        dtype = STORAGES[storage_type] if isinstance(storage_type, str) else None
        if dtype is None:
            raise SdrtError(f"{self.where}: a tensor of an unknown storage type: convert it to .safetensors")
        raw = self.archive.read(f"{self.prefix}data/{key}")
        if dtype == "bfloat16":  # numpy has no bfloat16: widen to float32 (the top half of its bits)
            return (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        return np.frombuffer(raw, dtype=dtype)


def load(path: str | Path) -> Any:
    """The object a `torch.save` file holds, with its tensors as numpy arrays."""
    where = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile):
        raise SdrtError(f"{where} is not a PyTorch zip file (a legacy or damaged .pt): save it again with a recent "
                        f"PyTorch, or convert it to .safetensors") from None
    with archive:
        names = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if not names:
            raise SdrtError(f"{where} has no data.pkl: not a file written by torch.save")
        prefix = names[0][: -len("data.pkl")]
        try:
            return _Unpickler(archive.read(names[0]), archive, prefix, where).load()
        except SdrtError:
            raise
        except Exception as e:  # a damaged pickle stream
            raise SdrtError(f"{where} could not be read ({type(e).__name__}: {e}): convert it to .safetensors") from None
