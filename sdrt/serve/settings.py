"""The web UI settings sdrt has: `GET/POST /sdapi/v1/options` and a request's `override_settings`.

Only settings sdrt acts on are listed; a key it does not have is a 400 naming the ones it has (never
silently ignored). Read-only ones are reported as they are and may be sent back unchanged:

=============================  =======================================================================
``sd_model_checkpoint``        the model a request without one runs on (a loaded model's name)
``sd_vae``                     "Automatic" / "None" (the model's own VAE) or a VAE of --vae NAME=DIR
``CLIP_stop_at_last_layers``   CLIP skip, the web UI's count (1: the last layer; diffusers' clip_skip + 1)
``prompt_syntax``              sdrt's: "a1111" (the default here) or "diffusers" (prompts as text, cut at
                               77 tokens)
``comma_padding_backtrack``    read-only: 20 (long prompts move words after a comma near a chunk's end)
``emphasis``                   read-only: "Original" (weights, then the chunk's mean restored)
``samples_format``             read-only: "png"
=============================  =======================================================================
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from sdrt.runtime.prompt_chunks import COMMA_BACKTRACK
from sdrt.serve.limits import RequestRejected

#: the VAE names that mean "the model's own"
OWN_VAE = ("Automatic", "None")
READ_ONLY = {"comma_padding_backtrack": COMMA_BACKTRACK, "emphasis": "Original", "samples_format": "png"}
SYNTAXES = {"a1111": "a1111", "diffusers": None}


class Options:
    """The server's current settings (one set for every client, as in the web UI)."""

    def __init__(self, model_names: list[str], vae_names: list[str] = ()):
        self.model_names = list(model_names)
        self.vae_names = list(vae_names)
        self._lock = threading.Lock()
        self.values: dict[str, Any] = {"sd_model_checkpoint": self.model_names[0], "sd_vae": "Automatic",
                                       "CLIP_stop_at_last_layers": 1, "prompt_syntax": "a1111", **READ_ONLY}

    def current(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.values)

    def checked(self, changes: Any, where: str) -> dict[str, Any]:
        """`changes` with every value checked (400 naming the key and what it takes)."""
        if not isinstance(changes, dict):
            raise RequestRejected(f"{where} must be an object of setting names and values")
        checkers: dict[str, Callable[[Any], Any]] = {
            "sd_model_checkpoint": self._model, "sd_vae": self._vae, "CLIP_stop_at_last_layers": _clip_stop,
            "prompt_syntax": _syntax}
        out = {}
        for key, value in changes.items():
            if key in READ_ONLY:
                if value != READ_ONLY[key]:
                    raise RequestRejected(f"{where}: {key} is fixed at {READ_ONLY[key]!r} in sdrt serve")
                continue
            if key not in checkers:
                raise RequestRejected(f"{where}: sdrt serve has no setting {str(key)[:60]!r}; it has "
                                      f"{', '.join([*checkers, *READ_ONLY])} (GET /sdapi/v1/options)")
            out[key] = checkers[key](value)
        return out

    def update(self, changes: Any) -> None:
        """POST /sdapi/v1/options: all or nothing."""
        checked = self.checked(changes, "options")
        with self._lock:
            self.values.update(checked)

    def for_request(self, override_settings: Any) -> dict[str, Any]:
        """The settings one request runs with: the server's, then its override_settings."""
        return {**self.current(), **self.checked(override_settings or {}, "override_settings")}

    def _model(self, value: Any) -> str:
        name = value.split(" [", 1)[0] if isinstance(value, str) else None  # titles carry " [hash]"
        if name not in self.model_names:
            raise RequestRejected(f"model {str(value)[:80]!r} is not loaded here: use one of "
                                  f"{', '.join(self.model_names)}", 404)
        return name

    def _vae(self, value: Any) -> str:
        if value not in (*OWN_VAE, *self.vae_names):
            raise RequestRejected(f"sd_vae {str(value)[:80]!r} is not a VAE of this server: use one of "
                                  f"{', '.join([*OWN_VAE, *self.vae_names])} (GET /sdapi/v1/sd-vae)")
        return value


def _clip_stop(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
        raise RequestRejected(f"CLIP_stop_at_last_layers {value!r} must be a whole number from 1 (the last "
                              f"layer) to 12")
    return value


def _syntax(value: Any) -> str:
    if value not in SYNTAXES:
        raise RequestRejected(f"prompt_syntax {str(value)[:40]!r} must be 'a1111' or 'diffusers'")
    return value
