"""`sdrt batch --ray`: the pending requests as a Ray Dataset, mapped by actors that each hold a pipeline.

Each actor loads the pipeline once, runs its blocks of requests in UNet batches and writes the
images itself (temporary name, then rename: the output folder must be one every actor sees, i.e.
local or shared storage). The driver streams the finished rows back and appends each to
`results.jsonl` as it arrives, so a run stopped at any point resumes with only what is missing.
Without --ray-address, a local Ray instance is started on 127.0.0.1 only (no dashboard, no usage
report; see sdrt.serve.ray_local) and stopped at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from sdrt.serve import batch
from sdrt.serve.queueing import GenerationRequest


def encode(item: batch.BatchItem) -> str:
    return json.dumps({"id": item.id, "line": item.line, "request": dataclasses.asdict(item.request)})


def decode(text: str) -> batch.BatchItem:
    data = json.loads(text)
    return batch.BatchItem(data["id"], data["line"], GenerationRequest(**data["request"]))


class PipelineActor:
    """A Ray Data actor: one pipeline, loaded once; blocks of encoded requests in, result lines out."""

    def __init__(self, model: str, backend: str, precision: str | None, out: str, max_batch: int):
        from sdrt.runtime.pipeline import Pipeline

        self.pipe = Pipeline.load(model, backend=backend, precision=precision)
        self.out = Path(out)
        self.max_batch = max_batch

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [decode(str(text)) for text in rows["item"]]
        lines = []
        for group in batch.group(items, self.max_batch):
            lines += batch.generate_group(self.pipe, self.out, group)
        for line in lines:
            line["worker_pid"] = os.getpid()
        return {"result": np.array([json.dumps(line) for line in lines], dtype=object)}


def start_ray(address: str | None, num_cpus: int) -> Any:
    """Join a cluster, or start a local Ray bound to loopback with nothing reported anywhere."""
    if not address:
        from sdrt.serve.ray_local import init_local

        return init_local(num_cpus, log_to_driver=False)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    return ray.init(address=address, ignore_reinit_error=True)


def run_ray(args: Any, pending: list[batch.BatchItem], out: Path, log: Any) -> int:
    start_ray(args.ray_address, num_cpus=max(2, args.ray_actors + 1))  # before `import ray`: see ray_local
    import ray

    try:
        dataset = ray.data.from_items([{"item": encode(item)} for item in pending])
        results = dataset.map_batches(
            PipelineActor, fn_constructor_args=(str(Path(args.model).resolve()), args.backend, args.precision,
                                                str(out.resolve()), args.max_batch),
            batch_size=args.max_batch, concurrency=args.ray_actors, num_cpus=1)
        writer = batch.ResultsWriter(out)
        made = 0
        try:
            for row in results.iter_rows():
                writer.write(json.loads(row["result"]))
                made += 1
                if made % 10 == 0 or made == len(pending):
                    log(f"{made}/{len(pending)} requests")
        finally:
            writer.close()
        return made
    finally:
        if not args.ray_address:
            ray.shutdown()
