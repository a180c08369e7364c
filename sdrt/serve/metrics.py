"""Prometheus metrics of one server, in their own registry (so two apps in one process do not clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the /metrics route)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("sdrt_queue_depth", "jobs waiting in a model's queue", ["model"], registry=r)
        self.latency = Histogram("sdrt_request_latency_seconds", "time from request to answer, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("sdrt_images", "images generated", ["model"], registry=r)
        self.requests = Counter("sdrt_requests", "requests answered, by route and status", ["route", "status"],
                                registry=r)
        self.errors = Counter("sdrt_errors", "requests answered with an error, by reason", ["reason"], registry=r)
        self.batch_images = Histogram("sdrt_batch_images", "images per UNet batch", ["model"],
                                      buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
