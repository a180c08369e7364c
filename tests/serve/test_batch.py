"""`sdrt batch`: request files, results beside the images, and resuming after a kill (nothing made twice)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from sdrt.errors import SdrtError
from sdrt.serve import batch

pytest.importorskip("fastapi")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def results(out):
    return [json.loads(line) for line in (out / batch.RESULTS).read_text().splitlines()]


@pytest.mark.parametrize("line,words", [
    ("not json", "not JSON"),
    ('{"steps": 2}', "prompt"),
    ('{"prompt": "x", "colour": 1}', "unknown fields"),
    ('{"prompt": "x", "id": "../etc/passwd"}', "id"),
    ('{"prompt": "x", "steps": "many"}', "many"),
])
def test_bad_lines_are_one_line_errors_before_anything_runs(tmp_path, line, words):
    path = tmp_path / "r.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(SdrtError, match=words):
        batch.read_requests(path, model="m", default_size=64, default_steps=2, seed_base=0)


def test_duplicate_ids_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "x"}])
    with pytest.raises(SdrtError, match="twice"):
        batch.read_requests(path, model="m", default_size=64, default_steps=2, seed_base=0)


def test_default_seeds_follow_the_line(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "a"}, {"prompt": "b", "seed": 5}, {"prompt": "c"}])
    items = batch.read_requests(path, model="m", default_size=64, default_steps=2, seed_base=100)
    assert [i.request.seed for i in items] == [100, 5, 102]
    assert [i.id for i in items] == ["line000001", "line000002", "line000003"]


def test_torn_last_line_is_cut_on_resume(tmp_path):
    (tmp_path / batch.RESULTS).write_text('{"id": "a"}\n{"id": "b", "ima')
    assert batch.finished_ids(tmp_path) == {"a"}
    writer = batch.ResultsWriter(tmp_path)
    writer.write({"id": "c"})
    writer.close()
    assert [r["id"] for r in results(tmp_path)] == ["a", "c"]


def test_leftover_temporary_images_of_pending_requests_are_removed(tmp_path):
    items = batch.read_requests(write_jsonl(tmp_path / "r.jsonl", [{"prompt": "a", "id": "a", "n": 2},
                                                                  {"prompt": "b", "id": "b"}]),
                                model="m", default_size=64, default_steps=2, seed_base=0)
    out = tmp_path / "out"
    out.mkdir()
    for name in (".a-1.png.123.tmp", ".b-0.png.45.tmp", "b-0.png", ".other.png.7.tmp"):
        (out / name).write_bytes(b"half")
    assert batch.remove_leftovers(out, items[:1]) == 1  # only the pending request's own leftovers
    assert sorted(p.name for p in out.iterdir()) == [".b-0.png.45.tmp", ".other.png.7.tmp", "b-0.png"]


def test_batch_in_process_matches_the_pipeline_and_resumes(tmp_path, tiny_pipeline):
    rows = [{"prompt": f"p{i}", "steps": 2, "width": 64, "height": 64, "n": 1 + i % 2} for i in range(5)]
    items = batch.read_requests(write_jsonl(tmp_path / "r.jsonl", rows), model="m", default_size=64,
                                default_steps=2, seed_base=0)
    out = tmp_path / "out"
    out.mkdir()
    calls = []

    def stop_after_two(line):
        calls.append(line)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch.run_local(tiny_pipeline, items, out, max_batch=1, log=stop_after_two)
    assert len(results(out)) == 2
    done = batch.finished_ids(out)
    batch.run_local(tiny_pipeline, [i for i in items if i.id not in done], out, max_batch=4, log=lambda line: None)
    lines = results(out)
    assert sorted(r["id"] for r in lines) == sorted(i.id for i in items)  # each exactly once
    assert sorted(p.name for p in out.glob("*.png")) == sorted(n for r in lines for n in r["images"])
    assert not list(out.glob(".*tmp"))
    third = next(r for r in lines if r["id"] == "line000003")
    expected = tiny_pipeline(["p2"], negative_prompt=[""], num_inference_steps=2, height=64, width=64,
                             seed=third["seeds"][0])
    assert np.array_equal(np.asarray(Image.open(out / third["images"][0]).convert("RGB")),
                          np.asarray(expected.images[0]))


def test_cli_killed_mid_run_resumes_to_exactly_all_images(tmp_path, tiny_onnx):
    n = 12
    rows = [{"prompt": f"prompt {i}", "steps": 2, "width": 64, "height": 64} for i in range(n)]
    requests = write_jsonl(tmp_path / "r.jsonl", rows)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sdrt.cli", "batch", str(requests), "--model", str(tiny_onnx), "--out",
               str(out), "--backend", "ort-cpu", "--max-batch", "1", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop(batch.PAUSE_AFTER_ENV, None)
    # the first run pauses itself after its 2nd result line (the batch module's test hook), so the kill
    # always lands mid-way, however fast the machine
    first = subprocess.Popen(command, env={**env, batch.PAUSE_AFTER_ENV: "2"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if (out / batch.RESULTS).is_file() and len((out / batch.RESULTS).read_bytes().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert first.poll() is None, f"the first run ended by itself (exit {first.returncode})"
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait(30)
    before = len(batch.finished_ids(out))
    assert before == 2, f"the first run was not stopped at its 2nd result ({before} of {n})"
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = results(out)
    ids = [r["id"] for r in lines]
    assert len(ids) == n and len(set(ids)) == n
    assert len(list(out.glob("*.png"))) == n and not list(out.glob(".*tmp"))
