"""The documentation: README.md is a door, docs/ is built by mkdocs, and every example marked runnable runs.

- README.md stays within 400 lines; its relative links (and benchmarks/README.md's) point at files.
- Every page under docs/ is in mkdocs.yml's nav, and `mkdocs build --strict` passes.
- docs/generate.md spells out `Pipeline.__call__`'s and `Pipeline.load`'s whole signatures.
- Every fenced ```bash or ```python block directly below a line ``<!-- example -->`` (README.md and
  docs/) runs as written, from a fresh working directory holding what `make demo` leaves:
  ``sdrt-demo/shapes-onnx`` (the shapes export), ``sdrt-demo/sample.png`` and ``sdrt-demo/mask.png``.
  ``<!-- example needs=FILE -->`` also puts FILE there (only the files in `PROVIDED` can be asked for).
  ``sdrt`` runs this checkout's CLI (a PATH shim around ``python -m sdrt.cli``), and port 7860
  becomes a free port so a serve example cannot collide with a real server.
The convention is documented in docs/development.md ("Runnable examples").
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 400

EXAMPLE_MARK = re.compile(r"^<!-- example(?P<attrs>(?:\s+\w+=\S+)*)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")
FENCE_OPEN = re.compile(r"^(`{3,})")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DEMO_PROMPT = "a red circle on a blue background"
SERVE_PORT = "7860"
EXAMPLE_TIMEOUT_S = 300


@dataclass(frozen=True)
class Example:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    needs: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{_rel(self.path)}:{self.line}"


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def examples_in(path: Path) -> list[Example]:
    """The marked blocks of one markdown file (marks quoted inside another fenced block are text);
    a mark not followed by a bash/python fence is an error."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE_OPEN.match(lines[i])
        if opening:  # skip a whole fenced block: what it quotes is not a mark
            i = _fence_end(lines, i, opening.group(1)) + 1
            continue
        mark = EXAMPLE_MARK.match(lines[i])
        if not mark:
            i += 1
            continue
        where = f"{_rel(path)}:{i + 1}"
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        assert fence and fence.group("lang") in ("bash", "python"), \
            f"{where}: <!-- example --> must sit directly above a ```bash or ```python fence"
        end = _fence_end(lines, i + 1, "```")
        assert end < len(lines), f"{where}: the example's fence is never closed"
        attrs = dict(a.split("=", 1) for a in mark.group("attrs").split())
        assert set(attrs) <= {"needs"}, f"{where}: unknown example attribute(s) {sorted(set(attrs) - {'needs'})}"
        needs = tuple(n for n in attrs.get("needs", "").split(",") if n)
        found.append(Example(path, i + 2, fence.group("lang"), "\n".join(lines[i + 2:end]) + "\n", needs))
        i = end + 1
    return found


def _fence_end(lines: list[str], start: int, ticks: str) -> int:
    """Index of the line closing the fence opened at `start` with `ticks` (len(lines) if none)."""
    for j in range(start + 1, len(lines)):
        stripped = lines[j].strip()
        if stripped.startswith(ticks) and set(stripped) == {"`"}:
            return j
    return len(lines)


def all_examples() -> list[Example]:
    return [e for path in doc_files() for e in examples_in(path)]


# -- the door and the site ---------------------------------------------------------------------
def test_readme_is_a_door_of_at_most_400_lines():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move material into docs/ (limit {MAX_README_LINES})"


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    return []


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_pages(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(set(pages) - set(nav)) == [], "docs pages missing from mkdocs.yml's nav"
    assert sorted(set(nav) - set(pages)) == [], "nav entries without a page"
    assert len(nav) == len(set(nav)), "a page is listed twice in the nav"


@pytest.mark.parametrize("markdown", ["README.md", "benchmarks/README.md"])
def test_relative_links_outside_the_site_point_at_files(markdown):
    """mkdocs checks docs/; these two files are read on the repository's web page instead."""
    path = ROOT / markdown
    broken = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor in the same file
        if not (path.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert broken == [], f"{markdown} links to missing files"


def test_mkdocs_builds_the_site_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stdout + run.stderr


def _documented_signature(opening: str) -> list[str]:
    """Parameter names of the signature block in docs/generate.md that starts with `opening`."""
    text = (DOCS / "generate.md").read_text(encoding="utf-8")
    block = text[text.index("\n" + opening) + 1:]
    block = block[:block.index("```")]
    inside = block[block.index("(") + 1:block.rindex(")")]
    names = [part.split("=")[0].strip().lstrip("*") for part in inside.replace("\n", " ").split(",")]
    return [name for name in names if name]


@pytest.mark.parametrize("opening, attribute", [("pipe(", "__call__"), ("Pipeline.load(", "load")])
def test_generate_page_documents_the_whole_signature(opening, attribute):
    import inspect

    from sdrt.runtime import Pipeline
    from sdrt.runtime.unet_pipeline import UNetPipeline  # the call of the families the docs show

    actual = [name for name in inspect.signature(getattr(UNetPipeline if attribute == "__call__" else Pipeline,
                                                             attribute)).parameters
              if name not in ("self", "cls")]
    documented = [name for name in _documented_signature(opening) if name != "folder"]
    assert documented == [name for name in actual if name != "folder"]


def test_no_page_points_at_the_old_demo_folder():
    """The demo writes sdrt-demo/shapes-onnx; sdrt-demo/tiny-onnx is gone (issue 22)."""
    stale = [_rel(p) for p in doc_files() if "sdrt-demo/tiny-onnx" in p.read_text(encoding="utf-8")]
    assert stale == []


def test_the_marker_parser_finds_marked_blocks_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\nnot marked\n```\n<!-- example -->\n```bash\nsdrt info\n```\n"
                    "<!-- example needs=style.safetensors -->\n```python\nprint(1)\n```\n")
    found = examples_in(page)
    assert [(e.lang, e.code, e.needs) for e in found] == [("bash", "sdrt info\n", ()),
                                                          ("python", "print(1)\n", ("style.safetensors",))]
    page.write_text("````markdown\n<!-- example -->\n```bash\nquoted, not run\n```\n````\n")
    assert examples_in(page) == []
    page.write_text("<!-- example -->\n\n```bash\nsdrt info\n```\n")
    with pytest.raises(AssertionError, match="directly above"):
        examples_in(page)


def test_the_runnable_examples_cover_the_newcomer_path():
    examples = all_examples()
    readme = [e for e in examples if e.path == README]
    assert any(e.lang == "python" and 'Pipeline.load("sdrt-demo/shapes-onnx"' in e.code for e in readme), \
        "README's Python example must be marked runnable and load sdrt-demo/shapes-onnx"
    code = "".join(e.code for e in examples)
    for needed in ("sdrt generate --model sdrt-demo/shapes-onnx", "--image sdrt-demo/sample.png",
                   "--mask sdrt-demo/mask.png", "sdrt info", "sdrt serve", "--lora", "sdrt batch"):
        assert needed in code, f"no runnable example uses {needed!r}"
    assert all(set(e.needs) <= set(PROVIDED) for e in examples), "an example needs a file no provider writes"


# -- running the examples ----------------------------------------------------------------------
def _style_lora(folder: Path, demo: Path) -> None:
    """A random kohya LoRA (rank 4) on the shapes model's UNet and text encoder: what a user's own
    LoRA file for this model would look like."""
    from tests.runtime.lora.helpers import map_shapes, write_kohya

    write_kohya(folder / "style.safetensors", map_shapes(demo / "shapes-onnx", text=True), seed=3)


PROVIDED: dict[str, Callable[[Path, Path], None]] = {"style.safetensors": _style_lora}


@pytest.fixture(scope="session")
def demo_outputs(onnx_export: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as `make demo` leaves sdrt-demo/: the shapes export (a copy: examples may write
    engine caches into it), sample.png (a generated picture) and mask.png (white centred square)."""
    from PIL import Image

    from sdrt.runtime import Pipeline

    demo = tmp_path_factory.mktemp("docs-demo") / "sdrt-demo"
    shutil.copytree(onnx_export("shapes"), demo / "shapes-onnx")
    pipe = Pipeline.load(demo / "shapes-onnx", "ort-cpu")
    try:
        image = pipe(DEMO_PROMPT, num_inference_steps=10, seed=0).images[0]
    finally:
        pipe.close()
    image.save(demo / "sample.png")
    width, height = image.size
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 4, height // 4, width - width // 4, height - height // 4))
    mask.save(demo / "mask.png")
    return demo


@pytest.fixture(scope="session")
def sdrt_on_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bin folder whose `sdrt` runs this checkout's CLI with the test's interpreter."""
    bin_dir = tmp_path_factory.mktemp("docs-bin")
    shim = bin_dir / "sdrt"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m sdrt.cli "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.parametrize("example", all_examples(), ids=lambda e: e.id)
def test_example_runs_as_written(example: Example, demo_outputs: Path, sdrt_on_path: Path, tmp_path: Path):
    (tmp_path / "sdrt-demo").symlink_to(demo_outputs, target_is_directory=True)
    for name in example.needs:
        PROVIDED[name](tmp_path, demo_outputs)
    code = example.code.replace(SERVE_PORT, _free_port())
    env = {**os.environ, "PATH": f"{sdrt_on_path}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "HF_HUB_OFFLINE": "1"}
    command = ["bash", "-euo", "pipefail", "-c", code] if example.lang == "bash" else [sys.executable, "-c", code]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S)
    assert run.returncode == 0, (f"{example.id} failed ({run.returncode}):\n{code}\n"
                                 f"--- stdout\n{run.stdout}\n--- stderr\n{run.stderr}")
