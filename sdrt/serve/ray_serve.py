"""The same FastAPI app as a Ray Serve deployment: replicas that each load the models and run their own queue.

    sdrt serve --ray --model DIR --replicas 2 [--max-replicas 4] [--num-gpus 1]
    serve run sdrt.serve.ray_serve:app_builder model=DIR replicas=2        # Ray's own CLI

Each replica is one `sdrt serve` worth of state: the pipelines, the bounded queue and batcher, the
limits and the API key check; Ray's proxy spreads requests over replicas and restarts a replica
whose process dies. `--max-replicas` turns on Ray Serve autoscaling (from --replicas up to it, on
ongoing requests per replica). Answers carry `X-Sdrt-Replica` (the replica's process id) so a client
or a test can see where a request ran.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

#: serve-run keys (key=value on Ray's CLI) -> default, for app_builder
BUILDER_DEFAULTS: dict[str, Any] = {
    "model": None, "backend": "auto", "precision": None, "cuda_graph": False, "api_key": None, "queue_size": 64, "max_batch": 4,
    "batch_wait_ms": 10.0, "timeout": 600.0, "max_body_mb": 32.0, "max_pixels": 1536 * 1536, "max_steps": 150,
    "max_images": 8, "max_prompt_chars": 4000, "cors_origin": [], "replicas": 1, "max_replicas": None,
    "num_gpus": 0.0, "lora_dir": None, "controlnet_dir": None, "vae_tiling": False, "vae_tile_size": None, "log_prompts": False,
}


class ReplicaPid:
    """ASGI middleware: `X-Sdrt-Replica: <pid>` on every answer."""

    def __init__(self, app: Any):
        self.app, self.pid = app, str(os.getpid()).encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-sdrt-replica", self.pid)]
            await send(message)

        await self.app(scope, receive, tagged if scope["type"] == "http" else send)


def deployment_options(args: argparse.Namespace) -> dict[str, Any]:
    """Ray Serve deployment options: fixed replicas, or autoscaling from --replicas to --max-replicas."""
    options: dict[str, Any] = {
        "name": "sdrt",
        "ray_actor_options": {"num_gpus": args.num_gpus, "num_cpus": 1},
        # what one replica accepts at once: its queue plus the batch it is running (the rest waits at the proxy)
        "max_ongoing_requests": args.queue_size + args.max_batch,
        "health_check_period_s": 5, "health_check_timeout_s": 30,
    }
    if args.max_replicas and args.max_replicas > args.replicas:
        options["autoscaling_config"] = {"min_replicas": args.replicas, "max_replicas": args.max_replicas,
                                         "target_ongoing_requests": max(1, args.max_batch)}
    else:
        options["num_replicas"] = args.replicas
    return options


def build_application(args: argparse.Namespace) -> Any:
    """A bound Ray Serve application for these arguments (what `serve.run` takes)."""
    from ray import serve

    from sdrt.serve.setup import limits_from, model_folders

    limits_from(args)
    folders = model_folders(args.model)  # fail here, not in every replica
    config = {key: getattr(args, key) for key in BUILDER_DEFAULTS}
    config["model"] = [f"{name}={folder.resolve()}" for name, folder in folders.items()]  # replicas' cwd may differ
    if config["lora_dir"]:
        from sdrt.serve.loras import LoraCatalog

        config["lora_dir"] = str(LoraCatalog(config["lora_dir"]).folder)
    if config["controlnet_dir"]:  # checked here, resolved: the replicas' cwd may differ
        from sdrt.serve.controlnets import ControlNetCatalog

        config["controlnet_dir"] = str(ControlNetCatalog(config["controlnet_dir"]).folder)

    @serve.ingress()
    class SdrtReplica:
        def __init__(self, config: dict[str, Any]):
            from sdrt.serve.setup import build_service

            self.config = argparse.Namespace(**config)
            self.service = build_service(self.config)

        def __serve_build_asgi_app__(self) -> Any:
            from sdrt.serve import access_log
            from sdrt.serve.app import create_app

            app = create_app(self.service, api_key=self.config.api_key,
                             cors_origins=tuple(self.config.cors_origin), log_prompts=self.config.log_prompts)
            access_log.to_stderr()  # the replica's stderr: Ray forwards it to the driver's terminal
            app.add_middleware(ReplicaPid)
            return app

        def check_health(self) -> None:
            if not self.service.ready:
                raise RuntimeError("a model worker thread died")

    return serve.deployment(SdrtReplica, **deployment_options(args)).bind(config)


def app_builder(cli_args: dict[str, str]) -> Any:
    """`serve run sdrt.serve.ray_serve:app_builder model=DIR [replicas=2 ...]`."""
    from sdrt.errors import SdrtError

    values = dict(BUILDER_DEFAULTS)
    for key, text in cli_args.items():
        if key not in values:
            raise SdrtError(f"unknown option {key!r}: use {', '.join(BUILDER_DEFAULTS)}")
        default = values[key]
        if key in ("model", "cors_origin"):
            values[key] = text.split(",")
        elif isinstance(default, bool):
            values[key] = text.lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)):
            values[key] = type(default)(text)
        elif key in ("max_replicas", "vae_tile_size"):
            values[key] = int(text)
        else:
            values[key] = text
    if not values["model"]:
        raise SdrtError("model=DIR is required (several: model=a=DIR1,b=DIR2)")
    return build_application(argparse.Namespace(**values))


def run_ray_serve(args: argparse.Namespace) -> int:
    """`sdrt serve --ray`: a local Ray on 127.0.0.1 (the HTTP proxy on --host), the app, until Ctrl-C."""
    from sdrt.serve.ray_local import init_local, local_only_env

    local_only_env()  # before `import ray`
    import ray
    from ray import serve

    application = build_application(args)
    init_local(num_cpus=max(2, args.replicas if not args.max_replicas else args.max_replicas) + 1)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(application, name="sdrt", route_prefix="/")
        print(f"sdrt serve (Ray Serve): http://{args.host}:{args.port}/ "
              f"({'API key required' if args.api_key else 'no API key'})", flush=True)
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()
