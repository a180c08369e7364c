"""A Pipeline shared by threads: every call returns exactly what the same call returns alone."""

from __future__ import annotations

import threading

import numpy as np

#: a mix of sizes, schedulers (deterministic and ancestral/SDE) and modes, several per thread
CALLS = [
    dict(prompt="a cat", height=32, width=32, scheduler="ddim", seed=11),
    dict(prompt="a dog", height=24, width=40, scheduler="euler_a", seed=22, num_images_per_prompt=2),
    dict(prompt="a red bicycle", height=40, width=24, scheduler="dpmpp_sde", seed=33, guidance_scale=1.0),
    dict(prompt="a boat", height=32, width=32, scheduler="dpmpp_2m_karras", seed=44, image="IMAGE", strength=0.7),
    dict(prompt="a house", height=16, width=48, scheduler="euler", seed=55),
    dict(prompt="a tree", height=32, width=32, scheduler="pndm", seed=66, negative_prompt="blurry"),
]


def _run(pipe, call, image):
    call = {**call, "image": image} if call.get("image") == "IMAGE" else call
    return pipe(**call, num_inference_steps=3, output_type="np").images


def test_four_threads_mixed_calls_equal_serial(pipelines):
    pipe = pipelines("tiny")
    image = (np.random.default_rng(3).random((32, 32, 3)) * 255).astype(np.uint8)
    serial = [_run(pipe, call, image) for call in CALLS]
    jobs = [i % len(CALLS) for i in range(4 * len(CALLS))]  # every call 4 times, interleaved
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(k: int) -> None:
        start.wait()
        for j in range(k, len(jobs), 4):
            try:
                results[j] = _run(pipe, CALLS[jobs[j]], image)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:3]
    assert len(results) == len(jobs)
    for j, call_index in enumerate(jobs):
        np.testing.assert_array_equal(results[j], serial[call_index], err_msg=f"job {j}: {CALLS[call_index]}")
