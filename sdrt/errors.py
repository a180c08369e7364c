"""The one error type users see: a single line that names the problem and the fix."""


class SdrtError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: a user reads it in a terminal, not in a traceback.
        super().__init__(" ".join(str(message).split()))


class BackendUnavailable(SdrtError):
    """An engine backend is not installed or cannot run here (no GPU, missing library)."""


class EngineMissing(SdrtError):
    """No built engine (or only a stale one) for a component: `sdrt build` makes it; `auto` falls back."""
