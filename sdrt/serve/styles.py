"""AUTOMATIC1111's prompt styles: a CSV file of named prompt pieces a request adds by name (`styles`).

The file is the web UI's `styles.csv`: a header with `name`, `prompt` and `negative_prompt` (other
columns are ignored), one style a row. Applying a style to a prompt, as the web UI documents: a style
whose text holds `{prompt}` has the request's prompt put in its place; any other is appended after a
comma (an empty side is left out). Styles apply in the order the request lists them, to the prompt
and the negative prompt alike. A file that does not parse is one line when the server starts; a
request naming a style the file lacks is a 400 that lists the ones it has.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from sdrt.errors import SdrtError
from sdrt.serve.limits import RequestRejected

PLACEHOLDER = "{prompt}"
COLUMNS = ("name", "prompt", "negative_prompt")


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative_prompt: str


def apply(text: str, style_text: str) -> str:
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, text)
    return ", ".join(part for part in (text.strip(), style_text.strip()) if part)


class Styles:
    """The styles of one file (none without a file)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.styles: dict[str, Style] = {}
        if self.path is not None:
            self.styles = read(self.path)

    def listing(self) -> list[dict[str, str]]:
        """GET /sdapi/v1/prompt-styles."""
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in self.styles.values()]

    def apply(self, names: list[str], prompt: str, negative_prompt: str) -> tuple[str, str]:
        for name in names:
            style = self.styles.get(name)
            if style is None:
                known = ", ".join(self.styles) or "none: start the server with --styles FILE"
                raise RequestRejected(f"style {name[:60]!r} is not one of this server's styles ({known}; "
                                      f"GET /sdapi/v1/prompt-styles lists them)")
            prompt, negative_prompt = apply(prompt, style.prompt), apply(negative_prompt, style.negative_prompt)
        return prompt, negative_prompt


def read(path: Path) -> dict[str, Style]:
    """The file's styles by name; one line naming the file and the problem when it does not parse."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SdrtError(f"--styles {path}: cannot read it ({e}): pass A1111's styles.csv (UTF-8)") from None
    try:
        rows = list(csv.DictReader(text.splitlines(), strict=True))
    except csv.Error as e:
        raise SdrtError(f"--styles {path} is not a CSV file ({e}): pass A1111's styles.csv "
                        f"(columns {', '.join(COLUMNS)})") from None
    header = set(rows[0]) if rows else set(next(csv.reader(text.splitlines()), []))
    if "name" not in header or "prompt" not in header:
        raise SdrtError(f"--styles {path} has no 'name' and 'prompt' columns (its header: "
                        f"{', '.join(sorted(h for h in header if h)) or 'empty'}): pass A1111's styles.csv "
                        f"(columns {', '.join(COLUMNS)})")
    styles: dict[str, Style] = {}
    for line, row in enumerate(rows, start=2):
        if None in row:  # more cells than the header has
            raise SdrtError(f"--styles {path} line {line} has more cells than the header: quote texts that "
                            f"hold commas")
        name = (row.get("name") or "").strip()
        if not name:
            continue
        styles[name] = Style(name, row.get("prompt") or "", row.get("negative_prompt") or "")
    return styles
