"""`sdrt.json`: the manifest that makes an ONNX model folder self-describing.

Export writes it; engines and the runtime read it (pure JSON, no torch). Schema (version 1)::

    {
      "format": "sdrt-onnx", "format_version": 1, "sdrt_version": "0.1.0", "created": ISO-8601,
      "source": {"kind": "preset" | "folder", "name": str, "path": str | null,
                 "content_hash": "sha256:..."},
      "exporter": {"method": "dynamo" | "torchscript", "opset": int, "torch": str, "onnx": str,
                   "diffusers": str, "transformers": str},
      "pipeline": {"family": "sd" | "sdxl" | "sdxl-refiner",   # a key of sdrt.spec.FAMILIES ("sd" if absent: pre-family manifests)
                   "variants": ["timestep_cond", "hidden_states"],  # the family's variants; absent: none
                   "dims": {"D1": int, "K1": int, ...},   # the family's own model symbols (sdrt.spec)
                   "class_name": str, "prediction_type": "epsilon" | "v_prediction" | "sample",
                   "scaling_factor": float, "shift_factor": float | null, "vae_scale_factor": int,
                   "latent_channels": int, "unet_in_channels": int, "text_hidden_size": int,
                   "token_length": int, "sample_size": int, "inpainting": bool,
                   "vae_sample_size": int},     # the VAE's tile size in px; absent in older manifests
      "sizes": {"latent_multiple": int, "min_latent": int, "max_latent": int,
                "rule": str},            # what the exported UNet really supports, and why
      "components": {
        NAME: {"file": "unet/model.onnx", "external_data": bool, "precision": "fp32" | "fp16",
               "sha256": str,            # of model.onnx (and its .data, if any)
               "precision_note": str,    # why this precision (e.g. the fp16 VAE policy)
               "check": {"passed": bool, "max_abs_error": float, "max_rel_error": float,
                         "threshold": {"max_abs": float, ...}, "shapes": [...]}}
      }
    }
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from sdrt import manifest_schema, spec
from sdrt.errors import SdrtError

MANIFEST_NAME = "sdrt.json"
FORMAT = "sdrt-onnx"
FORMAT_VERSION = 1
#: the family of manifests written before `pipeline.family` existed (they could only be SD 1.x/2.x)
LEGACY_FAMILY = "sd"
#: the folder inside a model folder where every backend keeps what it builds or caches from the ONNX
ENGINES_DIR = "engines"
#: `pipeline.kind`: a model folder (absent: the same), or a ControlNet folder (sdrt.export.controlnet)
PIPELINE_KIND = "pipeline"
CONTROLNET_KIND = "controlnet"
#: `pipeline.kind` of an IP-Adapter folder (sdrt.export.ip_adapter)
IP_ADAPTER_KIND = "ip_adapter"


def engines_dir(folder: str | os.PathLike, backend: str | None = None) -> Path:
    """``folder/engines`` (``folder/engines/<backend>`` for one backend's caches): the one place that names it."""
    root = Path(folder) / ENGINES_DIR
    return root / backend if backend else root


@dataclass(frozen=True)
class SizeRule:
    latent_multiple: int
    min_latent: int
    max_latent: int
    vae_scale_factor: int
    denoiser: str = "UNet"  # what the error names: the UNet, or the transformer (SD3, Flux)

    @property
    def image_multiple(self) -> int:
        return self.latent_multiple * self.vae_scale_factor

    def check_image_size(self, height: int, width: int) -> None:
        """Raise a one-line error when the UNet cannot run this image size."""
        f = self.vae_scale_factor
        for label, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0:
                raise SdrtError(f"{label} {value!r} is not a positive whole number of pixels")
            if value % self.image_multiple:
                m = self.image_multiple
                first = -(-self.min_latent * f // m) * m  # the smallest and largest sizes that run
                last = self.max_latent * f // m * m
                lo = value // m * m
                near = sorted({min(max(v, first), last) for v in (lo, lo + m)})
                hint = "use " + " or ".join(map(str, near))
                raise SdrtError(
                    f"{label} {value} is not a multiple of {self.image_multiple} "
                    f"(this model's {self.denoiser} needs latent sizes that are multiples of "
                    f"{self.latent_multiple}, image = {f} x latent): {hint}"
                )
            if not self.min_latent * f <= value <= self.max_latent * f:
                raise SdrtError(
                    f"{label} {value} is outside the sizes this model supports "
                    f"({self.min_latent * f}..{self.max_latent * f} pixels)"
                )


@dataclass(frozen=True)
class Manifest:
    """A parsed `sdrt.json`, with the folder it came from."""

    folder: Path
    data: dict[str, Any]
    _computed_hashes: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Manifest":
        folder = Path(folder)
        if not folder.exists():
            raise SdrtError(f"model folder {folder} does not exist: export one with "
                            f"`sdrt export --model tiny --out {folder}`")
        path = folder / MANIFEST_NAME
        if not path.is_file():
            if (folder / "model_index.json").is_file() and (folder / "unet" / "model.onnx").is_file():
                raise SdrtError(f"{folder} is an Optimum ONNX folder (no {MANIFEST_NAME}): sdrt generate and sdrt "
                                f"serve read it as it is; this command reads the sdrt view they write, "
                                f"{folder / ENGINES_DIR / 'sdrt-view'}")
            raise SdrtError(f"{folder} is not an sdrt ONNX folder (no {MANIFEST_NAME}): export it "
                            f"with `sdrt export --model SRC --out {folder}`")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SdrtError(f"{path} is unreadable ({e}): export the model again with --force")
        if not isinstance(data, dict):
            manifest_schema.validate(data, path)
        if data.get("format") != FORMAT:
            raise SdrtError(f"{path} is not an sdrt manifest (format {data.get('format')!r})")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise SdrtError(f"{path} has format version {data['format_version']}, newer than this "
                            f"sdrt understands ({FORMAT_VERSION}): upgrade sdrt")
        for key in ("pipeline", "components", "sizes"):
            if key not in data:
                raise SdrtError(f"{path} lacks the '{key}' section: export the model again with --force")
        if isinstance(data["pipeline"], dict) and "family" not in data["pipeline"]:
            # format 1 manifests written before families existed: sdrt exported SD 1.x/2.x only then
            data["pipeline"]["family"] = LEGACY_FAMILY
        manifest_schema.validate(data, path)
        manifest = cls(folder, data)
        manifest.spec  # an unknown family or variant is one line here, not a KeyError later
        return manifest

    def verify(self) -> None:
        """Every component's file still has the sha256 export recorded (one line naming the first that differs)."""
        manifest_schema.verify(self.folder, self.components)

    def component_hash(self, component: str) -> str:
        """A component's content hash, what every engine cache is keyed by: the sha256 export recorded
        (model.onnx, then its .data); for a manifest without one, the same hash computed from the files
        once per Manifest. Never an mtime: touching a file keeps its caches, new content does not.

        Files whose size differs from the `bytes` export recorded (a truncated copy, a file replaced
        by hand) are one line here, before any cache built from the recorded content is used."""
        path = self.onnx_path(component)  # a missing component or file is one line here
        entry = self.components[component]
        recorded_bytes = entry.get("bytes")
        if recorded_bytes is not None:
            actual = manifest_schema.component_bytes(manifest_schema.component_files(path))
            if actual != recorded_bytes:
                raise SdrtError(f"{path} (with its .data) is {actual} bytes, sdrt.json records {recorded_bytes}: the "
                                f"file changed since export: restore it or export the model again with --force")
        recorded = entry.get("sha256")
        if recorded:
            return recorded
        if component not in self._computed_hashes:
            files = manifest_schema.component_files(path)
            self._computed_hashes[component] = manifest_schema.component_sha256(files)
        return self._computed_hashes[component]

    def engines_dir(self, backend: str | None = None) -> Path:
        """Where backends keep engines and caches built from this folder (``engines/<backend>``)."""
        return engines_dir(self.folder, backend)

    # -- facts about the model ---------------------------------------------------------------
    @property
    def pipeline(self) -> dict[str, Any]:
        return self.data["pipeline"]

    @property
    def components(self) -> dict[str, dict[str, Any]]:
        return self.data["components"]

    def has(self, component: str) -> bool:
        return component in self.components

    @property
    def family(self) -> str:
        """The model family's name (a key of sdrt.spec.FAMILIES)."""
        return self.pipeline["family"]

    @property
    def family_spec(self) -> spec.Family:
        """The model family's table entry (sdrt.spec.families)."""
        return self.spec.family

    @property
    def kind(self) -> str:
        """"pipeline" (a model folder) or "controlnet" (a ControlNet folder: `pipeline.kind`)."""
        return self.pipeline.get("kind", PIPELINE_KIND)

    @property
    def residuals(self) -> spec.Residuals | None:
        """The ControlNet residual layout the model's UNet (or the ControlNet) has; None: not recorded
        (exported before ControlNet support)."""
        data = self.pipeline.get("residuals")
        return None if data is None else spec.Residuals.from_json(data, f"{self.folder / MANIFEST_NAME} "
                                                                        f"pipeline.residuals")

    @property
    def spec(self) -> spec.ModelSpec:
        """The model's tensors, from its family and variants (what engines and the runtime derive from);
        an unknown family or variant is one line naming the manifest. A ControlNet folder's spec has
        its one component; a manifest with `pipeline.residual_inputs` (sdrt.residual_graph) has a UNet
        that takes the residuals."""
        try:
            if self.kind == CONTROLNET_KIND:
                return spec.controlnet_spec(self.family, self._recorded_residuals(),
                                            int(self.pipeline.get("conditioning_channels", 3)))
            if self.kind == IP_ADAPTER_KIND:
                return spec.ip_adapter_spec(self.family, self.ip_adapter_layout("ip_adapter"))
            residuals = self._recorded_residuals() if self.pipeline.get("residual_inputs") else None
            ip = self.ip_adapter_layout("ip_adapter_inputs") if self.pipeline.get("ip_adapter_inputs") else None
            return spec.model_spec(self.family, tuple(self.pipeline.get("variants", ())), residuals, ip)
        except SdrtError as e:
            raise SdrtError(f"{self.folder / MANIFEST_NAME}: {e}") from None

    def ip_adapter_layout(self, key: str = "ip_adapter") -> spec.IPAdapterLayout:
        """The IP-Adapter layout recorded under `pipeline.<key>`: an IP-Adapter folder's own ("ip_adapter"),
        or the one a derived UNet takes ("ip_adapter_inputs", sdrt.ip_graph)."""
        return spec.IPAdapterLayout.from_json(self.pipeline.get(key), f"{self.folder / MANIFEST_NAME} pipeline.{key}")

    def _recorded_residuals(self) -> spec.Residuals:
        residuals = self.residuals
        if residuals is None:
            raise SdrtError("pipeline.residuals is missing: export the model again with --force")
        return residuals

    def without(self, components: Sequence[str]) -> "Manifest":
        """This manifest with optional components left out, as if exported without them: SD3's T5
        (``text_encoder_3``, diffusers' ``text_encoder_3=None``; the runtime then feeds zeros in its place,
        as diffusers does). A component is optional when a variant of its family brings it and nothing
        else; any other name is one line naming the ones that can be left out."""
        if not components:
            return self
        variants = list(self.pipeline.get("variants", ()))
        data = json.loads(json.dumps(self.data))  # a copy: the folder's own manifest is left as it is
        for name in dict.fromkeys(components):
            if name not in data["components"] and name in self._family_components():
                continue  # exported without it already
            optional = self._optional_components(variants)
            if name not in optional:
                can = ", ".join(optional) or "none"
                raise SdrtError(f"{self.folder} cannot run without {name} (optional components of this "
                                f"{self.family} model: {can}): leave out only those")
            variants.remove(optional[name])
            del data["components"][name]
        data["pipeline"]["variants"] = variants
        return Manifest(self.folder, data)

    def _family_components(self) -> set[str]:
        """Every component a model of this family can have (all its variants on)."""
        every = spec.FAMILIES[self.family].variants
        return {c.name for c in spec.model_spec(self.family, tuple(every)).components}

    def _optional_components(self, variants: list[str]) -> dict[str, str]:
        """component -> the variant that brings it and nothing else (components this folder has)."""
        def names(chosen: list[str]) -> set[str]:
            return {c.name for c in spec.model_spec(self.family, tuple(chosen)).components}

        found = {}
        for variant in variants:
            extra = names(variants) - names([v for v in variants if v != variant])
            if len(extra) == 1 and next(iter(extra)) in self.components:
                found[next(iter(extra))] = variant
        return found

    def precision(self, component: str) -> str:
        return self.components[component]["precision"]

    def onnx_path(self, component: str) -> Path:
        """Path of a component's model.onnx; a one-line error when it is absent."""
        if component not in self.components:
            raise SdrtError(f"{self.folder} has no {component} (exported: "
                            f"{', '.join(self.components) or 'none'}): export it with "
                            f"`sdrt export --model SRC --out {self.folder} --force` (without --components, or naming {component})")
        path = self.folder / self.components[component]["file"]
        if not path.is_file():
            raise SdrtError(f"{path} is missing: export the model again with --force")
        return path

    @property
    def values(self) -> dict[str, int]:
        """The model's fixed shape symbols (C, Cin, S, D, f and the family's own, e.g. P, T)."""
        p = self.pipeline
        return spec.model_values(
            latent_channels=p["latent_channels"], unet_in_channels=p["unet_in_channels"],
            text_hidden_size=p["text_hidden_size"], vae_scale_factor=p["vae_scale_factor"],
            token_length=p["token_length"], extra=p.get("dims") or {},
        )

    @property
    def sizes(self) -> SizeRule:
        s = self.data["sizes"]
        denoiser = self.family_spec.denoiser
        return SizeRule(s["latent_multiple"], s["min_latent"], s["max_latent"],
                        self.pipeline["vae_scale_factor"], "UNet" if denoiser == "unet" else denoiser)

    @property
    def default_image_size(self) -> int:
        if self.pipeline.get("sample_size") is None:
            raise SdrtError(f"{self.folder} is a {self.kind} folder without a default size: pass the size, "
                            f"or load it with a base model")
        return self.pipeline["sample_size"] * self.pipeline["vae_scale_factor"]


def load_kind(folder: str | os.PathLike, kind: str, refusal: Callable[["Manifest"], str]) -> "Manifest":
    """The manifest of a folder whose `pipeline.kind` is `kind` (a ControlNet, an IP-Adapter folder); any
    other folder is the one line `refusal(manifest)` says."""
    manifest = Manifest.load(folder)
    if manifest.kind != kind:
        raise SdrtError(refusal(manifest))
    return manifest


def write_manifest(folder: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write `sdrt.json` atomically (temp file, then rename)."""
    from sdrt.atomic import write_text

    return write_text(Path(folder) / MANIFEST_NAME, json.dumps(data, indent=2, sort_keys=False) + "\n")
