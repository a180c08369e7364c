"""A CI-size load test (the full one is sdrt/bench/serve_load.py): 16 concurrent clients against a small
queue on the tiny preset; every request ends with an image or a clean 429, none is lost."""

from __future__ import annotations

import threading

import requests

from tests.serve.conftest import live_server, make_service


def test_no_request_is_lost_under_concurrent_load(tiny_pipeline):
    from sdrt.serve.app import create_app

    service = make_service({"tiny": tiny_pipeline}, queue_size=4, max_batch=4)
    outcomes: list[tuple[int, int, bool]] = []  # (status, images, has Retry-After)
    lock = threading.Lock()

    def client(k: int, url: str) -> None:
        with requests.Session() as session:
            for i in range(4):
                body = {"prompt": f"c{k} r{i}", "width": 32, "height": 32, "steps": 1, "seed": 100 * k + i}
                r = session.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
                images = len(r.json().get("images", [])) if r.status_code == 200 else 0
                with lock:
                    outcomes.append((r.status_code, images, "Retry-After" in r.headers))

    try:
        with live_server(create_app(service)) as url:
            threads = [threading.Thread(target=client, args=(k, url)) for k in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            metrics = requests.get(f"{url}/metrics", timeout=30).text
    finally:
        service.close()
    assert len(outcomes) == 64
    assert all((s == 200 and n == 1) or (s == 429 and retry) for s, n, retry in outcomes), outcomes
    ok = sum(1 for s, _, _ in outcomes if s == 200)
    assert ok >= 4  # the queue takes at least its size
    assert f'sdrt_images_total{{model="tiny"}} {float(ok)}' in metrics
