"""The TensorRT engine store: cache keys, entries on disk, and which engine a call may load.

An engine is only valid for the exact ONNX it came from, the TensorRT build that made it, the GPU it
was tuned on, the precision and the optimization profile. All five go into its key (the ONNX as the
manifest's component sha256, `Manifest.component_hash`: a touched file keeps its engines):

    DIR/engines/<backend>/<component>-<key>/engine.plan
                                           /key.json    what the key hashed, the build options, timing

Loading matches the *identity* (ONNX, library, GPU, precision) exactly and then picks an engine whose
profile covers the requested dims. An entry with another identity is stale: it is reported, never
loaded. Entries are written into a temporary sibling and renamed into place, so a crashed build leaves
no half engine behind.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sdrt import atomic
from sdrt.engines.trt_profiles import DimRange
from sdrt.manifest import engines_dir

KEY_FORMAT = 1
ENGINE_FILE = "engine.plan"
KEY_FILE = "key.json"
#: identity fields, in the order a stale-engine message names them
IDENTITY_FIELDS = ("onnx", "library", "target", "precision")
FIELD_WORDS = {"onnx": "another ONNX export", "library": "another TensorRT", "target": "another GPU",
               "precision": "another precision"}


def identity(component: str, onnx_hash: str, library: str, target: str, precision: str) -> dict[str, str]:
    """What an engine must match to be loaded at all."""
    return {"component": component, "onnx": onnx_hash, "library": library, "target": target,
            "precision": precision}


def cache_key(ident: Mapping[str, str], profile: DimRange, build: Mapping[str, Any]) -> str:
    """Key of one engine: identity + profile + builder options (a different option is a new engine)."""
    text = json.dumps({"format": KEY_FORMAT, "identity": dict(ident), "profile": profile.to_json(),
                       "build": dict(build)}, sort_keys=True)
    return f"{ident['component']}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def store_root(folder: Path, backend: str) -> Path:
    return engines_dir(folder, backend)


@dataclass(frozen=True)
class Entry:
    path: Path            # the entry's folder
    identity: dict[str, str]
    profile: DimRange
    info: dict[str, Any]  # the whole key.json

    @property
    def engine_file(self) -> Path:
        return self.path / ENGINE_FILE


def read_entries(root: Path, component: str) -> list[Entry]:
    """Every readable entry of a component under one backend's store (unreadable ones are skipped)."""
    found = []
    if not root.is_dir():
        return found
    for sub in sorted(root.glob(f"{component}-*")):
        try:
            info = json.loads((sub / KEY_FILE).read_text())
            ident = info["identity"]
            if info.get("format") != KEY_FORMAT or ident.get("component") != component:
                continue
            found.append(Entry(sub, ident, DimRange.from_json(info["profile"]), info))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def write_entry(root: Path, key: str, plan: bytes, ident: Mapping[str, str], profile: DimRange,
                build: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> Entry:
    """Write an engine and its key.json atomically (temp folder, then rename over any old one)."""
    root.mkdir(parents=True, exist_ok=True)
    info = {"format": KEY_FORMAT, "key": key, "identity": dict(ident), "profile": profile.to_json(),
            "build": dict(build), **dict(extra or {})}
    with atomic.staged_folder(root / key, if_exists="replace") as tmp:
        (tmp / ENGINE_FILE).write_bytes(plan)
        (tmp / KEY_FILE).write_text(json.dumps(info, indent=2) + "\n")
    final = root / key
    return Entry(final, dict(ident), profile, info)


def stale_reasons(entry_identity: Mapping[str, str], want: Mapping[str, str]) -> list[str]:
    """Which identity fields differ, with both values: why an engine may not be loaded."""
    out = []
    for field in IDENTITY_FIELDS:
        if entry_identity.get(field) != want.get(field):
            if field == "onnx":
                out.append(FIELD_WORDS[field])
            else:
                out.append(f"{FIELD_WORDS[field]} ({entry_identity.get(field)}; here: {want.get(field)})")
    return out


@dataclass(frozen=True)
class Choice:
    """The outcome of looking for an engine: one to load, or why there is none."""

    entry: Entry | None
    fresh: tuple[Entry, ...]   # entries matching the identity (whatever their profile)
    stale: tuple[tuple[Entry, tuple[str, ...]], ...]  # entries that must not load, with reasons


def choose(entries: list[Entry], want: Mapping[str, str], dims: Mapping[str, int]) -> Choice:
    """The engine for these dims: identity equal, profile covering; the tightest profile wins.

    Empty dims only sort the entries into fresh and stale (what `load` checks before any shape).
    """
    fresh, stale = [], []
    for e in entries:
        reasons = stale_reasons(e.identity, want)
        if reasons:
            stale.append((e, tuple(reasons)))
        else:
            fresh.append(e)
    covering = [e for e in fresh if dims and e.profile.covers(dims)]

    def span(e: Entry) -> tuple[int, ...]:
        return tuple(e.profile.max[s] - e.profile.min[s] for s in sorted(e.profile.max))

    best = min(covering, key=span) if covering else None
    return Choice(best, tuple(fresh), tuple(stale))
