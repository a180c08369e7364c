"""Ray Serve and Ray Data on a local Ray bound to 127.0.0.1 (tiny preset, ort-cpu).

Ray comes with `sdrt[dev]` (CI runs these); without it (`pip install 'sdrt[ray]'`) they skip.
Marked slow (the whole module): starting Ray and its replicas takes 30-60 s on the 2-core machine. Each Ray instance
gets its own RAY_TMPDIR, so the tests can check that it stopped itself: no process carrying that
RAY_TMPDIR in its environment outlives the run. The batch test runs first, so its Ray instances
and the Serve fixture's never share the 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.serve.conftest import decode_b64_png, wait_for

from sdrt.serve import batch
from sdrt.serve.ray_local import local_only_env

local_only_env()  # before Ray is imported, as sdrt does (Ray reads it on import)
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'sdrt[ray]'")
requests = pytest.importorskip("requests")
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_tmpdir():
    """A private RAY_TMPDIR (short: Ray's socket paths must fit 107 bytes), removed after the test."""
    folder = tempfile.mkdtemp(prefix="sdrt-ray-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def ray_processes(ray_tmp: str) -> list[int]:
    """The processes of the Ray instance(s) that use `ray_tmp` (they all inherit RAY_TMPDIR)."""
    marker = f"RAY_TMPDIR={ray_tmp}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found.append(int(entry))
            except OSError:
                pass
    return found


def assert_ray_stopped(ray_tmp: str) -> None:
    assert wait_for(lambda: not ray_processes(ray_tmp), 60), f"Ray left processes behind: {ray_processes(ray_tmp)}"


def test_batch_on_ray_interrupted_and_resumed_makes_exactly_100_images(tmp_path, tiny_onnx, ray_tmpdir):
    requests_file = tmp_path / "r.jsonl"
    requests_file.write_text("".join(json.dumps({"prompt": f"prompt {i}", "steps": 1, "width": 32, "height": 32})
                                     + "\n" for i in range(100)))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sdrt.cli", "batch", str(requests_file), "--model", str(tiny_onnx), "--out",
               str(out), "--backend", "ort-cpu", "--ray", "--ray-actors", "2", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmpdir}
    env.pop(batch.PAUSE_AFTER_ENV, None)
    results = out / "results.jsonl"
    # the first run pauses itself after its 10th result line (sdrt.serve.batch's test hook), so the
    # Ctrl-C below always lands mid-way, however fast the machine
    first = subprocess.Popen(command, env={**env, batch.PAUSE_AFTER_ENV: "10"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: results.is_file() and len(results.read_bytes().splitlines()) >= 10
                        or first.poll() is not None, 300)
        assert first.poll() is None, f"the first run ended by itself (exit {first.returncode})"
        first.send_signal(signal.SIGINT)  # Ctrl-C
        # sdrt's exit status for an interrupted command; the bound is generous because Ray's shutdown once took
        # over 120 s inside a full cold suite run on the 2-core machine (2026-12-08; 23 s alone)
        assert first.wait(300) == 130
        assert_ray_stopped(ray_tmpdir)  # Ctrl-C stops the local Ray it started
    finally:
        with_group_killed(first)
    before = len(results.read_bytes().splitlines())
    print(f"results after the interrupt: {before} of 100")
    assert before == 10, f"the first run was not stopped at its 10th result ({before} of 100)"
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        _, err = second.communicate(timeout=600)
        assert second.returncode == 0, err[-2000:]
        assert_ray_stopped(ray_tmpdir)
    finally:
        with_group_killed(second)
    ids = [json.loads(line)["id"] for line in results.read_text().splitlines()]
    assert len(ids) == 100 and len(set(ids)) == 100
    assert len(list(out.glob("*.png"))) == 100 and not list(out.glob(".*tmp"))
    workers = {json.loads(line)["worker_pid"] for line in results.read_text().splitlines()}
    assert len(workers) >= 2  # more than one pipeline-holding actor did the work


def with_group_killed(process: subprocess.Popen) -> None:
    """Whatever a failed run left behind in its session goes with it (a safety net: Ray stops itself)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(30)


@pytest.fixture(scope="module")
def ray_server(tiny_onnx, tiny_ip_adapter_onnx, tmp_path_factory):
    from tests.runtime.lora.test_input import _kohya_from_map

    lora_dir = tmp_path_factory.mktemp("loras")
    controlnet_dir = tmp_path_factory.mktemp("controlnets")
    shutil.copytree(tiny_ip_adapter_onnx, controlnet_dir / "tiny_ip", ignore=shutil.ignore_patterns("engines"))
    _kohya_from_map(tiny_onnx, lora_dir / "style.safetensors", count=6, rank=4, alpha=4.0, seed=3)
    ray_tmp = tempfile.mkdtemp(prefix="sdrt-ray-", dir="/tmp")
    saved = {key: os.environ.get(key) for key in ("RAY_USAGE_STATS_ENABLED", "RAY_TMPDIR")}
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=ray_tmp)
    from ray import serve

    from sdrt.serve import ray_serve

    args = argparse.Namespace(**{**ray_serve.BUILDER_DEFAULTS, "model": [f"tiny={tiny_onnx}"],
                                 "backend": "ort-cpu", "replicas": 2, "max_batch": 2, "lora_dir": str(lora_dir),
                                 "controlnet_dir": str(controlnet_dir)})
    from sdrt.serve.ray_local import init_local

    application = ray_serve.build_application(args)
    port = free_port()
    init_local(num_cpus=3, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application, name="sdrt", route_prefix="/")
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", ray_tmp=ray_tmp, lora_dir=lora_dir,
                              controlnet_dir=controlnet_dir)
    finally:
        serve.shutdown()
        ray.shutdown()
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    assert_ray_stopped(ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)


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


def test_ray_listens_on_loopback_only(ray_server):
    """Every listening socket of the Ray instance is on 127.0.0.1, but the one Ray Serve opens per replica."""
    import psutil

    wildcard = {}
    for pid in ray_processes(ray_server.ray_tmp):
        try:
            process = psutil.Process(pid)
            listening = [c.laddr for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
            name = f"{process.name()} (pid {pid})"
        except psutil.NoSuchProcess:
            continue
        for address in listening:
            if address.ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1"):
                wildcard.setdefault(name, []).append(f"{address.ip}:{address.port}")
    replicas = {name: ports for name, ports in wildcard.items() if "ServeReplica" in name}
    assert wildcard == replicas, wildcard  # nothing else listens off loopback
    # Ray 2.60's inter-deployment gRPC server of each replica ("[::]:0", fixed in Ray): at most one port each
    assert all(len(ports) == 1 for ports in replicas.values()), replicas


def test_requests_land_on_both_replicas(ray_server, tiny_pipeline):
    url = ray_server.url
    assert requests.get(f"{url}/readyz", timeout=30).json()["ready"] is True
    pids = set()
    answers = {}
    threads = [threading.Thread(target=lambda s=s: answers.__setitem__(s, txt2img(url, s)[0]))
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


def test_lora_tags_on_the_replicas(ray_server, tiny_onnx):
    from sdrt.runtime import Pipeline

    body = {"prompt": "a boat <lora:style:0.8>", "width": 64, "height": 64, "steps": 2, "cfg_scale": 7.0}
    answers: dict[int, requests.Response] = {}
    threads = [threading.Thread(target=lambda s=s: answers.__setitem__(s, requests.post(
        f"{ray_server.url}/sdapi/v1/txt2img", json={**body, "seed": s}, timeout=120))) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    ref = Pipeline.load(tiny_onnx, backend="ort-cpu")
    ref.set_loras([(str(ray_server.lora_dir / "style.safetensors"), 0.8)])
    for seed, r in sorted(answers.items()):
        assert r.status_code == 200, r.text[:300]
        expected = ref(["a boat"], negative_prompt=[""], num_inference_steps=2, guidance_scale=7.0, height=64,
                       width=64, seed=seed).images[0]
        assert np.array_equal(decode_b64_png(r.json()["images"][0]), np.asarray(expected))
        assert "Lora hashes" in json.loads(r.json()["info"])["extra_generation_params"]


def test_a_killed_replica_is_restarted_and_no_request_is_lost(ray_server):
    url = ray_server.url
    first = {requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64,
                                                                   "steps": 1}, timeout=120).headers["x-sdrt-replica"]
             for _ in range(6)}
    victim = int(sorted(first)[0])
    outcomes: dict[int, tuple] = {}

    def client(seed: int) -> None:
        outcomes[seed] = txt2img(url, 1000 + seed)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(12)]
    for t in threads:
        t.start()
    # the replica's process dies mid-run: once the first answer is back, the other requests are still out
    # (a fixed sleep could kill it after the last one on a fast machine, and prove nothing)
    assert wait_for(lambda: len(outcomes) >= 1, 300)
    outstanding = 12 - len(outcomes)
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join(300)
    assert sorted(outcomes) == list(range(12))
    for seed, (r, attempts) in outcomes.items():
        assert r.status_code == 200, (seed, r.status_code, r.text[:200])
        assert json.loads(r.json()["info"])["all_seeds"] == [1000 + seed]
        assert int(r.headers["x-sdrt-replica"]) != victim or attempts == 1
    retried = sum(1 for _, attempts in outcomes.values() if attempts > 1)
    print(f"requests retried after the kill: {retried} of 12 ({outstanding} were out when it died)")

    def restarted() -> bool:
        pids = {requests.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64,
                                                                      "steps": 1}, timeout=120)
                .headers.get("x-sdrt-replica") for _ in range(4)}
        return len(pids - first) >= 1 and str(victim) not in pids

    assert wait_for(restarted, timeout_s=180), "Ray did not bring a second replica back"


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
    with pytest.raises(SdrtError, match="is not a folder"):  # checked before any replica starts
        ray_serve.app_builder({"model": str(tiny_onnx), "controlnet_dir": str(tiny_onnx / "no-such-folder")})


def test_ip_adapter_unit_on_the_replicas(ray_server, tiny_onnx):
    """--controlnet-dir reaches every replica: an IP-Adapter unit by name, after the LoRA requests above."""
    import base64
    import io

    from PIL import Image

    from sdrt.runtime import Pipeline

    assert requests.get(f"{ray_server.url}/controlnet/model_list", timeout=60).json()["model_list"] == ["tiny_ip"]
    picture = Image.fromarray((np.random.default_rng(3).random((40, 48, 3)) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    unit = {"image": base64.b64encode(buffer.getvalue()).decode(), "module": "ip-adapter_clip_sd15",
            "model": "tiny_ip", "weight": 0.6}
    body = {"prompt": "a boat", "width": 64, "height": 64, "steps": 2, "cfg_scale": 7.0, "seed": 4,
            "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    answers = [requests.post(f"{ray_server.url}/sdapi/v1/txt2img", json=body, timeout=120) for _ in range(2)]
    ref = Pipeline.load(tiny_onnx, backend="ort-cpu", ip_adapter=ray_server.controlnet_dir / "tiny_ip")
    ref.set_ip_adapter_scale(0.6)
    expected = ref(["a boat"], negative_prompt=[""], num_inference_steps=2, guidance_scale=7.0, height=64, width=64,
                   seed=4, ip_adapter_image=picture).images[0]
    ref.close()
    for r in answers:
        assert r.status_code == 200, r.text[:300]
        assert np.array_equal(decode_b64_png(r.json()["images"][0]), np.asarray(expected))
        assert str(ray_server.controlnet_dir) not in r.text
