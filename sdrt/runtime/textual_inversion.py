"""Textual-inversion embeddings without re-export: the text encoders' token table, extended at run time.

An embedding is a few vectors in a text encoder's token-embedding space, named by a word. sdrt gives
each loaded vector a new token id past the vocabulary (V, V+1, ...) and each text encoder a token
table with those rows appended: the table is an initializer of the exported graph (the weight map
says which), so the backend replaces it like a LoRA's merged weights (`Backend.reweight`: ONNX
Runtime takes an initializer of another shape, OpenVINO a longer Constant; TensorRT engines have a
fixed shape, so they are refused in one line). Only the text encoders change; nothing is re-exported.

A prompt names an embedding by its name's tokens (a word matches wherever its tokens appear, as in
the web UI; case does not matter, CLIP's tokenizer lowercases), in both prompt syntaxes: the name's
tokens become the vectors' ids. Names are the file name without its suffix (the web UI's rule), or
the token a diffusers file stores (`<cat-toy>`), or the `token=` given.

Files: the web UI's `.pt` (read without torch, `sdrt.runtime.torch_pickle`) and `.safetensors`
(`emb_params`; SDXL: `clip_l` and `clip_g`), and diffusers' (`{token: vectors}`, .bin or .safetensors).
With an embedding in the prompt, SDXL's pooled embedding follows diffusers' graphs: they pool at the
highest token id, which is then the embedding's, not EOS (diffusers' load_textual_inversion does the same).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sdrt.errors import SdrtError

SUFFIXES = (".safetensors", ".pt", ".bin")
#: the web UI's SDXL keys -> the text encoder each feeds
SDXL_KEYS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}
TABLE_PARAMETER = "token_embedding.weight"


@dataclass
class Embedding:
    name: str
    path: Path
    vectors: dict[str, np.ndarray]  # text encoder -> [n, D]
    short_hash: str
    ids: list[int] = field(default_factory=list)  # the token ids its vectors take

    @property
    def count(self) -> int:
        return next(iter(self.vectors.values())).shape[0]


def files_in(folder: str | Path) -> list[str]:
    """The embedding files of a folder (the web UI's embeddings/), sorted; one line when it is no folder."""
    path = Path(folder)
    if not path.is_dir():
        raise SdrtError(f"embeddings folder {folder} is not a folder: pass the folder holding .pt/.safetensors files")
    return sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def _tensors(path: Path) -> dict[str, Any]:
    if path.suffix.lower() == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:  # safetensors raises its own error types
            raise SdrtError(f"{path} is not a readable .safetensors file ({e})") from None
    from sdrt.runtime import torch_pickle

    data = torch_pickle.load(path)
    if not isinstance(data, dict):
        raise SdrtError(f"{path} holds a {type(data).__name__}, not an embedding")
    return data


def read(path: str | Path, encoders: Sequence[str], token: str | None = None) -> Embedding:
    """One embedding file -> its vectors per text encoder of the model (`encoders`)."""
    path = Path(path)
    if not path.is_file():
        raise SdrtError(f"embedding file {path} does not exist")
    if path.suffix.lower() not in SUFFIXES:
        raise SdrtError(f"{path} is not an embedding file: use .safetensors, .pt or .bin (the web UI's .png "
                        f"embeddings: save them as .safetensors)")
    data = _tensors(path)
    name = token or path.stem
    if "string_to_param" in data:  # the web UI's .pt
        params = data["string_to_param"]
        vectors = {encoders[0]: next(iter(params.values()))} if isinstance(params, dict) and params else {}
    elif "emb_params" in data:
        vectors = {encoders[0]: data["emb_params"]}
    elif set(SDXL_KEYS) & set(data):
        vectors = {SDXL_KEYS[k]: v for k, v in data.items() if k in SDXL_KEYS}
    else:  # diffusers: {token: vectors}
        arrays = {k: v for k, v in data.items() if isinstance(v, np.ndarray)}
        if len(arrays) != 1:
            raise SdrtError(f"{path} is not an embedding this sdrt reads (keys: {', '.join(list(data)[:6])}): "
                            f"expected the web UI's string_to_param / emb_params / clip_l+clip_g, or one token")
        key, value = next(iter(arrays.items()))
        name = token or key
        vectors = {encoders[0]: value}
    vectors = {k: np.atleast_2d(np.asarray(v, dtype=np.float32)) for k, v in vectors.items()}
    missing = [e for e in encoders if e not in vectors]
    if missing:
        have = ", ".join(f"{k} {v.shape[-1]}" for k, v in vectors.items())
        raise SdrtError(f"{path} has vectors for {have or 'nothing'}, this model's text encoders are "
                        f"{', '.join(encoders)}: it was trained for another model family")
    if not name or any(c.isspace() for c in name):
        raise SdrtError(f"embedding name {name!r} must be one word: pass token= (a word without spaces)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return Embedding(name, path, {e: vectors[e] for e in encoders}, digest)


class TextualInversions:
    """The embeddings a pipeline has loaded: the prompt lookup (`find`, `ids`) and the extended tables."""

    def __init__(self) -> None:
        self.embeddings: dict[str, Embedding] = {}
        self.used: set[str] = set()  # names found in the current call's prompts
        self._names: dict[int, list[tuple[list[int], Embedding]]] = {}  # per tokenizer

    @property
    def active(self) -> bool:
        return bool(self.embeddings)

    def add(self, embedding: Embedding, vocabulary: int) -> None:
        old = self.embeddings.get(embedding.name)
        if old is not None and old.path != embedding.path:
            raise SdrtError(f"an embedding named {embedding.name!r} is loaded already (from {old.path}): pass token= "
                            f"to name this one differently")
        self.embeddings[embedding.name] = embedding
        self._renumber(vocabulary)

    def clear(self) -> None:
        self.embeddings.clear()
        self._names.clear()

    def _renumber(self, vocabulary: int) -> None:
        next_id = vocabulary
        for e in self.embeddings.values():
            e.ids = list(range(next_id, next_id + e.count))
            next_id += e.count
        self._names.clear()

    def tables(self, bases: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each text encoder's token table with every embedding's rows appended (in its dtype)."""
        return {c: np.concatenate([base, *(e.vectors[c].astype(base.dtype) for e in self.embeddings.values())])
                for c, base in bases.items()}

    def _named(self, tokenizer: Any) -> list[tuple[list[int], Embedding]]:
        key = id(tokenizer)
        if key not in self._names:
            names = [(tokenizer.token_ids([e.name])[0], e) for e in self.embeddings.values()]
            self._names[key] = sorted((n for n in names if n[0]), key=lambda n: -len(n[0]))
        return self._names[key]

    def find(self, tokenizer: Any, ids: Sequence[int], position: int) -> tuple[list[int], int] | None:
        """The embedding whose name's tokens start at `position` (the longest), as (its ids, tokens spanned)."""
        for name_ids, e in self._named(tokenizer):
            if list(ids[position:position + len(name_ids)]) == name_ids:
                self.used.add(e.name)
                return e.ids, len(name_ids)
        return None

    def ids(self, tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
        """diffusers' way with embeddings: each name's tokens replaced by its ids, then BOS + 75 + EOS + pad."""
        size = tokenizer.model_max_length - 2
        rows = []
        for ids in tokenizer.token_ids(texts):
            out, i = [], 0
            while i < len(ids):
                found = self.find(tokenizer, ids, i)
                if found is None:
                    out.append(ids[i])
                    i += 1
                else:
                    out += found[0]
                    i += found[1]
            out = out[:size]
            rows.append([tokenizer.bos_token_id, *out, tokenizer.eos_token_id]
                        + [tokenizer.pad_token_id] * (size - len(out)))
        return np.asarray(rows, dtype=np.int32)

    def describe(self) -> list[dict[str, str]]:
        """The embeddings the call's prompts named (the infotext's "TI hashes")."""
        return [{"name": n, "hash": self.embeddings[n].short_hash} for n in sorted(self.used) if n in self.embeddings]

    def listing(self) -> dict[str, Any]:
        """GET /sdapi/v1/embeddings: the web UI's shape."""
        loaded = {e.name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                           "shape": int(next(iter(e.vectors.values())).shape[-1]), "vectors": e.count}
                  for e in self.embeddings.values()}
        return {"loaded": loaded, "skipped": {}}


def table_record(weight_map: Any) -> dict[str, Any]:
    """The weight-map record of a text encoder's token table."""
    for name, records in weight_map.parameters.items():
        if name.endswith(TABLE_PARAMETER) and records and records[0]["layout"] == "identity":
            return records[0]
    raise SdrtError(f"{weight_map.folder}: the weight map has no token table ({TABLE_PARAMETER}): re-export with "
                    f"sdrt export --force")


def install(pipe: Any) -> None:
    """Give each text encoder of `pipe` its extended table (or its own again, with no embedding left)."""
    if pipe.backend_name.startswith("tensorrt"):
        raise SdrtError(f"textual inversion extends the text encoders' token table, and {pipe.backend_name} engines "
                        f"have fixed shapes: use --backend ort-cpu, ort-cuda or openvino")
    adapters = pipe.adapters
    bases = {c: adapters.weight_map(c).base(table_record(adapters.weight_map(c))) for c in pipe.model_spec.text_encoders}
    tables = pipe.embeddings.tables(bases) if pipe.embeddings.active else {}
    for component in pipe.model_spec.text_encoders:
        name = table_record(adapters.weight_map(component))["initializer"]
        extra = {name: tables[component]} if component in tables else {}
        if adapters.extra.get(component, {}).keys() == extra.keys() == set():
            continue
        adapters.extra[component] = extra
        overrides = {**adapters.changed.get(component, {}), **extra}
        external = adapters.weight_map(component).external() & set(overrides)
        pipe.backend.release_for_reweight(pipe.engines[component])
        pipe.engines[component] = pipe.backend.reweight(pipe.manifest, component, pipe.engines[component], overrides,
                                                        {}, external=external)
