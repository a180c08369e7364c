"""Ray Serve and Ray Data on a local Ray bound to 127.0.0.1 (tiny preset, ort-cpu).

Needs `pip install 'sdrt[ray]'` (not in `dev`: ray + pyarrow + pandas add ~600 MB); skips without it.
Marked slow: starting Ray and its replicas takes 30-60 s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.serve.conftest import decode_b64_png, wait_for

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'sdrt[ray]'")
requests = pytest.importorskip("requests")
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_server(tiny_onnx):
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from ray import serve

    from sdrt.serve import ray_serve

    args = argparse.Namespace(**{**ray_serve.BUILDER_DEFAULTS, "model": [f"tiny={tiny_onnx}"],
                                 "backend": "ort-cpu", "replicas": 2, "max_batch": 2})
    application = ray_serve.build_application(args)
    port = free_port()
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", num_cpus=3, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application, name="sdrt", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def txt2img(url: str, seed: int, tries: int = 4) -> tuple[requests.Response, int]:
    """POST with bounded retries on 5xx or a dropped connection (what a client does when a replica dies)."""
    body = {"prompt": "a boat", "width": 64, "height": 64, "steps": 2, "seed": seed, "cfg_scale": 7.0}
    for attempt in range(1, tries + 1):
        try:
            r = requests.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
            if r.status_code < 500:
                return r, attempt
        except requests.ConnectionError:
            pass
        time.sleep(1.0)
    return r, tries


def test_requests_land_on_both_replicas(ray_server, tiny_pipeline):
    assert requests.get(f"{ray_server}/readyz", timeout=30).json()["ready"] is True
    pids = set()
    answers = {}
    threads = [threading.Thread(target=lambda s=s: answers.__setitem__(s, txt2img(ray_server, s)[0]))
               for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for seed, r in answers.items():
        assert r.status_code == 200
        pids.add(r.headers["x-sdrt-replica"])
        expected = tiny_pipeline(["a boat"], negative_prompt=[""], num_inference_steps=2, guidance_scale=7.0,
                                 height=64, width=64, seed=seed).images[0]
        assert np.array_equal(decode_b64_png(r.json()["images"][0]), np.asarray(expected))
    assert len(pids) == 2, pids


def test_a_killed_replica_is_restarted_and_no_request_is_lost(ray_server):
    first = {requests.post(f"{ray_server}/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64,
                                                                   "steps": 1}, timeout=120).headers["x-sdrt-replica"]
             for _ in range(6)}
    victim = int(sorted(first)[0])
    outcomes: dict[int, tuple] = {}

    def client(seed: int) -> None:
        outcomes[seed] = txt2img(ray_server, 1000 + seed)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(12)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    os.kill(victim, signal.SIGKILL)  # the replica's process dies mid-run
    for t in threads:
        t.join(300)
    assert sorted(outcomes) == list(range(12))
    for seed, (r, attempts) in outcomes.items():
        assert r.status_code == 200, (seed, r.status_code, r.text[:200])
        assert json.loads(r.json()["info"])["all_seeds"] == [1000 + seed]
        assert int(r.headers["x-sdrt-replica"]) != victim or attempts == 1
    retried = sum(1 for _, attempts in outcomes.values() if attempts > 1)
    print(f"requests retried after the kill: {retried} of 12")

    def restarted() -> bool:
        pids = {requests.post(f"{ray_server}/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64,
                                                                      "steps": 1}, timeout=120)
                .headers.get("x-sdrt-replica") for _ in range(4)}
        return len(pids - first) >= 1 and str(victim) not in pids

    assert wait_for(restarted, timeout_s=180), "Ray did not bring a second replica back"


def test_batch_on_ray_interrupted_and_resumed_makes_exactly_100_images(tmp_path, tiny_onnx):
    requests_file = tmp_path / "r.jsonl"
    requests_file.write_text("".join(json.dumps({"prompt": f"prompt {i}", "steps": 1, "width": 32, "height": 32})
                                     + "\n" for i in range(100)))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sdrt.cli", "batch", str(requests_file), "--model", str(tiny_onnx), "--out",
               str(out), "--backend", "ort-cpu", "--ray", "--ray-actors", "2", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    results = out / "results.jsonl"
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        assert wait_for(lambda: results.is_file() and len(results.read_bytes().splitlines()) >= 10, 300)
        first.send_signal(signal.SIGINT)  # Ctrl-C
        first.wait(120)
    finally:
        with_group_killed(first)
    before = len(results.read_bytes().splitlines())
    assert 10 <= before < 100, f"the first run was not interrupted mid-way ({before} of 100)"
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        _, err = second.communicate(timeout=600)
    finally:
        with_group_killed(second)
    assert second.returncode == 0, err[-2000:]
    ids = [json.loads(line)["id"] for line in results.read_text().splitlines()]
    assert len(ids) == 100 and len(set(ids)) == 100
    assert len(list(out.glob("*.png"))) == 100 and not list(out.glob(".*tmp"))
    workers = {json.loads(line)["worker_pid"] for line in results.read_text().splitlines()}
    assert len(workers) >= 2  # more than one pipeline-holding actor did the work


def with_group_killed(process: subprocess.Popen) -> None:
    """Whatever the run left behind in its session (Ray's own processes) goes with it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(30)


def test_serve_run_target_builds_the_application(tiny_onnx):
    from sdrt.errors import SdrtError
    from sdrt.serve import ray_serve

    application = ray_serve.app_builder({"model": f"tiny={tiny_onnx}", "replicas": "1", "max_replicas": "3",
                                         "backend": "ort-cpu"})
    assert application is not None
    options = ray_serve.deployment_options(argparse.Namespace(**{**ray_serve.BUILDER_DEFAULTS, "replicas": 1,
                                                                 "max_replicas": 3, "num_gpus": 1.0}))
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4}
    assert options["ray_actor_options"]["num_gpus"] == 1.0
    with pytest.raises(SdrtError, match="unknown option"):
        ray_serve.app_builder({"model": str(tiny_onnx), "colour": "red"})
