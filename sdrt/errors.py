"""The one error type users see: a single line that names the problem and the fix; warnings likewise."""

import sys
import warnings


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


class SdrtWarning(UserWarning):
    """Something sdrt did differently from what was asked (a prompt cut, an argument ignored): one line."""


def warn(message: str) -> None:
    """Emit a one-line `SdrtWarning` (the CLI prints it as `sdrt: warning: ...`)."""
    warnings.warn(SdrtWarning(" ".join(str(message).split())), stacklevel=3)


def print_warnings_one_line() -> None:
    """Show SdrtWarnings as `sdrt: warning: <message>` on stderr (no file, line or source); others as usual."""
    original = warnings.showwarning
    if getattr(original, "sdrt_one_line", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SdrtWarning):
            print(f"sdrt: warning: {message}", file=file or sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    show.sdrt_one_line = True  # type: ignore[attr-defined]
    warnings.showwarning = show
