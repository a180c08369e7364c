"""Install footprint: the lean sdrt runtime against the PyTorch reference stack, in fresh venvs.

    python -m sdrt.bench.footprint [--out benchmarks/results] [--keep]     (from a checkout of the repository)

Each stack is installed into its own new virtual environment with the repository's
constraints.txt (so torch stays the tested CPU wheel); the size reported is what the install
added to the venv's site-packages (an empty venv's pip and setuptools are subtracted).
Writes ``footprint-<date>/footprint.json``, ``footprint.md`` and ``RUN.md`` under --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

from sdrt.atomic import write_text
from sdrt.bench.provenance import record_run

ROOT = Path(__file__).resolve().parents[2]  # the repository: `pip install .` and constraints.txt

#: stack name -> (what is installed, pip arguments after `install`)
STACKS: dict[str, tuple[str, list[str]]] = {
    "sdrt (lean runtime)": ("pip install .  ->  numpy, onnxruntime, tokenizers, pillow, tqdm", [str(ROOT)]),
    "PyTorch reference": ("torch==2.13.0 (CPU wheel) + diffusers + transformers",
                          ["torch==2.13.0", "diffusers", "transformers"]),
}


def tree_bytes(path: Path) -> int:
    """Bytes of every regular file under path (symlinks not followed)."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise SystemExit(f"no site-packages under {venv}")
    return found[0]


def installed(venv: Path) -> list[str]:
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def measure(name: str, pip_args: list[str], workdir: Path) -> dict:
    """Fresh venv, install, size of what the install added."""
    venv = workdir / name.split()[0].lower()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    empty = tree_bytes(site_packages(venv))
    baseline = set(installed(venv))
    start = time.perf_counter()
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                    "-c", str(ROOT / "constraints.txt"), *pip_args], check=True, cwd=workdir)
    seconds = time.perf_counter() - start
    full = tree_bytes(site_packages(venv))
    packages = [p for p in installed(venv) if p not in baseline]
    return {"stack": name, "installed_mb": round((full - empty) / 1024**2, 1),
            "packages": packages, "install_s": round(seconds, 1)}


def render(result: dict) -> str:
    lines = ["# Install footprint", "",
             "| stack | what | installed size (MB) | packages |", "|---|---|---|---|"]
    for row in result["stacks"]:
        lines.append(f"| {row['stack']} | {row['what']} | {row['installed_mb']:,.0f} | {len(row['packages'])} |")
    lean, ref = (r["installed_mb"] for r in result["stacks"])
    lines += ["", f"The PyTorch stack is {ref / lean:.1f}× the size of the lean runtime.", "",
              "## Method", "",
              "- each stack in its own fresh `python -m venv`, `pip install -c constraints.txt ...`",
              "- size = bytes added to the venv's site-packages (the empty venv's pip is subtracted)",
              f"- Python {result['python']}, {result['date']}", "", "## Packages", ""]
    for row in result["stacks"]:
        lines.append(f"- **{row['stack']}**: {', '.join(row['packages'])}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdrt.bench.footprint", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--keep", action="store_true", help="keep the venvs (printed) for inspection")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="sdrt-footprint-"))
    rows = []
    for name, (what, pip_args) in STACKS.items():
        print(f"installing {name} ...", flush=True)
        rows.append(measure(name, pip_args, workdir) | {"what": what})
        print(f"  {rows[-1]['installed_mb']:,.1f} MB, {len(rows[-1]['packages'])} packages", flush=True)
    result = {"schema": "sdrt-footprint", "date": datetime.now().isoformat(timespec="seconds"),
              "python": sys.version.split()[0], "stacks": rows}
    folder = Path(args.out) / f"footprint-{date.today().isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "footprint.json", json.dumps(result, indent=2) + "\n")
    write_text(folder / "footprint.md", render(result))
    record_run(folder)
    print(render(result))
    if args.keep:
        print(f"venvs kept in {workdir}")
    else:
        subprocess.run(["rm", "-rf", str(workdir)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
