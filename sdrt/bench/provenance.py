"""Where a result came from: the exact command line and the code version that made it.

Every tool that writes a results folder calls `record_run(folder)`: it adds one entry to the folder's
``RUN.md`` with the command line (``sys.orig_argv``, as typed: interpreter, ``-m module`` or script,
arguments), the environment variables the tool reads (named by the tool), the working directory,
and the commit of the checkout the ``sdrt`` package was imported from (``git rev-parse HEAD``; noted
when the checkout had uncommitted changes; "not a git checkout" for an installed package). A second
call with the same command and commit (a tool that rewrites its files as it goes) adds nothing; a
resumed run with another command adds its own entry, so the file lists every run that wrote there.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from sdrt.atomic import write_text

RUN_FILE = "RUN.md"
TITLE = "# How this folder was made"


def command_line(env: Iterable[str] = ()) -> str:
    """The process's command line as a shell would take it, prefixed by the named variables that are set."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    assigned = [f"{name}={shlex.quote(os.environ[name])}" for name in env if name in os.environ]
    return " ".join([*assigned, shlex.join(argv)])


def code_version(where: Path | None = None) -> tuple[str | None, bool]:
    """(commit hash, whether the checkout has uncommitted changes) of the git checkout holding `where`
    (default: the sdrt package); (None, False) outside a git checkout or without git."""
    folder = where or Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None, False
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), bool(status and status.strip())


def entry(env: Iterable[str] = ()) -> list[str]:
    """The lines of one RUN.md entry for this process."""
    commit, dirty = code_version()
    if commit is None:
        version = "not a git checkout (an installed sdrt): the version is sdrt's own " + _sdrt_version()
    else:
        version = f"`{commit}`" + (" with uncommitted changes in the checkout" if dirty else "")
    return [f"## {datetime.now(timezone.utc).isoformat(timespec='seconds')}", "",
            f"- command: `{command_line(env)}`",
            f"- working directory: `{os.getcwd()}`",
            f"- commit: {version}", ""]


def _sdrt_version() -> str:
    from sdrt import __version__

    return __version__


def record_run(folder: str | os.PathLike, env: Iterable[str] = ()) -> Path:
    """Add this process's command and commit to ``folder/RUN.md`` (once per command and commit)."""
    path = Path(folder) / RUN_FILE
    new = entry(env)
    old = path.read_text(encoding="utf-8") if path.is_file() else f"{TITLE}\n\n"
    if _last_entry(old) == new[2:5]:  # the same command, folder and commit as the last entry
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, old.rstrip("\n") + "\n\n" + "\n".join(new))
    return path


def _last_entry(text: str) -> list[str] | None:
    """The command, working-directory and commit lines of the last entry of a RUN.md, or None."""
    lines = text.splitlines()
    commands = [i for i, line in enumerate(lines) if line.startswith("- command: ")]
    return lines[commands[-1]:commands[-1] + 3] if commands else None


def write_result(folder: str | os.PathLike, result: object, markdown: str, env: Iterable[str] = ()) -> Path:
    """`sdrt.atomic.write_result` (result.json and result.md) plus the folder's RUN.md."""
    from sdrt import atomic

    out = atomic.write_result(folder, result, markdown)
    record_run(out, env)
    return out
