"""Queueing and batching on a scripted fake pipeline: what is batched with what, 429, cancellation, timeouts."""

from __future__ import annotations

import socket

import pytest

from sdrt.serve.queueing import GenerationRequest, Job, JobQueue, QueueFull
from tests.serve.conftest import live_server, wait_for


def request(**kw):
    base = dict(model="fake", prompt="p", width=64, height=64, steps=3, seed=10)
    return GenerationRequest(**{**base, **kw})


def test_batch_key_separates_incompatible_requests():
    assert request(seed=1).batch_key() == request(seed=2, prompt="other", n=3).batch_key()
    for change in ({"width": 128}, {"steps": 4}, {"sampler": "euler"}, {"guidance_scale": 1.0}, {"model": "b"}):
        assert request(**change).batch_key() != request().batch_key(), change


def test_queue_gathers_compatible_jobs_in_order_and_keeps_the_rest():
    q = JobQueue(10)
    jobs = [Job(request(seed=1)), Job(request(steps=9)), Job(request(seed=2, n=2)), Job(request(seed=3, n=2))]
    for j in jobs:
        q.put(j)
    batch = q.take_batch(max_images=3, wait_s=0)
    assert [j.request.seed for j in batch] == [1, 2]  # the third compatible job would exceed 3 images
    assert [j.request.steps for j in q.take_batch(3, 0)] == [9]  # the incompatible one kept its place
    assert [j.request.seed for j in q.take_batch(3, 0)] == [3]


def test_full_queue_refuses():
    q = JobQueue(2)
    q.put(Job(request()))
    q.put(Job(request()))
    with pytest.raises(QueueFull):
        q.put(Job(request()))


def test_cancelled_jobs_are_dropped_before_they_run():
    q = JobQueue(5)
    a, b = Job(request(seed=1)), Job(request(seed=2))
    q.put(a)
    q.put(b)
    a.cancel()
    assert q.take_batch(4, 0) == [b]
    assert a.future.done() and a.future.exception() is not None


def test_worker_batches_requests_queued_while_it_was_busy(fake_service):
    service, pipe = fake_service(max_batch=4)
    pipe.hold.clear()
    first = service.submit(request(seed=1))
    assert pipe.entered.wait(10)
    later = [service.submit(request(seed=s, prompt=f"p{s}")) for s in (20, 30)]
    later.append(service.submit(request(seed=40, steps=7)))  # incompatible: its own batch
    pipe.hold.set()
    results = [j.future.result(10) for j in [first, *later]]
    assert [c["seeds"] for c in pipe.calls] == [[1], [20, 30], [40]]
    assert pipe.calls[1]["prompts"] == ["p20", "p30"]
    assert [r.batch_images for r in results] == [1, 2, 2, 1]
    assert [r.seeds for r in results] == [[1], [20], [30], [40]]
    # each job gets its own images back: the fake paints seed % 256 into the red channel
    assert [r.images[0].getpixel((0, 0))[0] for r in results] == [1, 20, 30, 40]


def test_image_i_of_a_request_uses_seed_plus_i(fake_service):
    service, pipe = fake_service(max_batch=8)
    result = service.submit(request(seed=2**32 - 1, n=3)).future.result(10)
    assert result.seeds == [2**32 - 1, 0, 1]
    assert pipe.calls[0]["seeds"] == [2**32 - 1, 0, 1]


def test_a_running_batch_whose_clients_all_left_stops_at_the_next_step(fake_service):
    from sdrt.serve.queueing import JobCancelled

    service, pipe = fake_service(max_batch=4)
    pipe.hold.clear()
    job = service.submit(request(seed=1, steps=50))
    assert pipe.entered.wait(10)
    job.cancel()
    pipe.hold.set()
    with pytest.raises(JobCancelled):
        job.future.result(10)
    assert pipe.steps_run == 0  # the first step's callback stopped the loop


def test_max_batch_one_turns_batching_off(fake_service):
    service, pipe = fake_service(max_batch=1)
    pipe.hold.clear()
    jobs = [service.submit(request(seed=s)) for s in (1, 2, 3)]
    pipe.hold.set()
    for j in jobs:
        j.future.result(10)
    assert [c["seeds"] for c in pipe.calls] == [[1], [2], [3]]


def test_http_queue_full_is_429_with_retry_after(fake_service):
    from fastapi.testclient import TestClient

    from sdrt.serve.app import create_app

    service, pipe = fake_service(queue_size=1, max_batch=1)
    pipe.hold.clear()
    service.submit(request(seed=1))  # running (held)
    assert pipe.entered.wait(10)
    service.submit(request(seed=2))  # fills the queue
    client = TestClient(create_app(service))
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 3})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert "busy" in r.json()["detail"]
    r = client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64"})
    assert r.status_code == 429 and "busy" in r.json()["error"]["message"]
    pipe.hold.set()


def test_timeout_is_504_and_the_job_never_runs(fake_service):
    from fastapi.testclient import TestClient

    from sdrt.serve.app import create_app

    service, pipe = fake_service(max_batch=1, timeout_s=0.3)
    pipe.hold.clear()
    service.submit(request(seed=1))
    assert pipe.entered.wait(10)
    client = TestClient(create_app(service))
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 3, "seed": 77})
    assert r.status_code == 504 and "--timeout" in r.json()["detail"]
    pipe.hold.set()
    assert wait_for(lambda: len(service.workers["fake"].queue) == 0)
    assert all(77 not in c["seeds"] for c in pipe.calls)


def test_client_that_disconnects_is_cancelled(fake_service):
    from sdrt.serve.app import create_app

    service, pipe = fake_service(max_batch=1)
    pipe.hold.clear()
    service.submit(request(seed=1))
    assert pipe.entered.wait(10)
    worker = service.workers["fake"]
    with live_server(create_app(service)) as url:
        port = int(url.rsplit(":", 1)[1])
        body = b'{"prompt": "x", "width": 64, "height": 64, "steps": 3, "seed": 99}'
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            assert wait_for(lambda: len(worker.queue) == 1)
        assert wait_for(lambda: all(j.cancelled.is_set() for j in worker.queue._jobs))
        pipe.hold.set()
        assert wait_for(lambda: len(worker.queue) == 0)
    assert all(99 not in c["seeds"] for c in pipe.calls)


@pytest.mark.parametrize("sampler,img2img", [("euler_a", False), ("ddim", True)])
def test_a_batched_image_equals_the_image_made_alone(tiny_pipeline, sampler, img2img):
    """The real pipeline: three requests in one UNet batch give each the images of its own runs."""
    import numpy as np
    from PIL import Image

    from sdrt.serve.service import run_batch

    start = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)) if img2img else None
    jobs = [Job(request(prompt=p, seed=s, n=n, sampler=sampler, init_image=start, strength=0.6))
            for p, s, n in (("a cat", 3, 2), ("a dog", 50, 1), ("a boat", 7, 1))]
    results = run_batch(tiny_pipeline, jobs)
    assert [r.batch_images for r in results] == [4, 4, 4]
    for job, result in zip(jobs, results):
        for image, seed in zip(result.images, job.request.seeds):
            alone = tiny_pipeline(job.request.prompt, num_inference_steps=3, height=64, width=64, seed=seed,
                                  scheduler=sampler, image=start, strength=0.6).images[0]
            assert np.array_equal(np.asarray(image), np.asarray(alone)), (job.request.prompt, seed)
