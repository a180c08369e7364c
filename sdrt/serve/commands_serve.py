"""`sdrt serve`: the image service (A1111- and OpenAI-compatible) on uvicorn, or on Ray Serve with --ray."""

from __future__ import annotations

import argparse
import ipaddress
import os

from sdrt.errors import SdrtError
from sdrt.runtime.commands_generate import add_vae_tiling_arguments
from sdrt.runtime.load_options import add_low_memory_argument
from sdrt.serve.setup import backend_options, build_service, limits_from, model_folders  # noqa: F401 (tests, Ray)

LOOPBACK_NAMES = ("localhost",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]DIR",
                   help="ONNX model folder to serve (repeat for several; NAME defaults to the folder's name)")
    p.add_argument("--backend", default="auto", help="engine backend, as for `sdrt generate` (default auto)")
    p.add_argument("--precision", default=None, choices=("f32", "bf16", "f16"),
                   help="run-time precision, as for `sdrt generate` (default: the exported one)")
    p.add_argument("--cuda-graph", action="store_true", help="CUDA-graph replay on GPU backends, as for generate")
    add_vae_tiling_arguments(p)  # a server option: A1111's API has no standard field for it
    add_low_memory_argument(p)
    p.add_argument("--lora-dir", default=None, metavar="DIR",
                   help="LoRAs requests may pick by name with <lora:NAME:SCALE> prompt tags: DIR/NAME.safetensors")
    p.add_argument("--embeddings-dir", default=None, metavar="DIR",
                   help="textual-inversion embeddings (.pt/.safetensors) prompts name by file name "
                        "(GET /sdapi/v1/embeddings)")
    p.add_argument("--vae", action="append", default=[], metavar="NAME=DIR",
                   help="a VAE export requests may pick (override_settings sd_vae=NAME; repeatable)")
    p.add_argument("--styles", default=None, metavar="FILE",
                   help="A1111's styles.csv (name, prompt, negative_prompt): requests add them by name (`styles`)")
    p.add_argument("--controlnet-dir", default=None, metavar="DIR",
                   help="ControlNets and IP-Adapters requests may name in alwayson_scripts.controlnet units: "
                        "DIR/NAME, each an exported folder (sdrt export --model CONTROLNET_OR_IP_DIR --out DIR/NAME)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860, A1111's)")
    p.add_argument("--api-key", default=os.environ.get("SDRT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $SDRT_API_KEY); needed off loopback")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without --api-key (anyone who reaches it can use it)")
    p.add_argument("--queue-size", type=int, default=64, help="jobs waiting per model before 429 (default 64)")
    p.add_argument("--max-batch", type=int, default=4,
                   help="images of compatible requests run in one UNet batch (default 4; 1 turns batching off)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a batch waits for compatible requests to join (default 10 ms)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take, queue included (default 600)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body (default 32 MB)")
    p.add_argument("--max-pixels", type=int, default=1536 * 1536, help="largest width x height (default 1536x1536)")
    p.add_argument("--max-steps", type=int, default=150, help="most denoising steps per request (default 150)")
    p.add_argument("--max-images", type=int, default=8, help="most images per request (default 8)")
    p.add_argument("--max-prompt-chars", type=int, default=4000, help="longest prompt (default 4000 characters)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from ORIGIN (repeat; default: CORS off)")
    p.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment (pip install 'sdrt[ray]')")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas, each holding the pipelines (default 1)")
    p.add_argument("--max-replicas", type=int, default=None,
                   help="Ray Serve autoscaling: grow up to this many replicas under load (default: fixed --replicas)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per Ray Serve replica (default 0)")
    p.add_argument("--log-prompts", action="store_true",
                   help="also write each request's prompt in the access log (default: never; the log has one line "
                        "per request on stderr: method, path, status, seconds, images)")
    p.add_argument("--log-level", default="warning",
                   help="uvicorn's own log level (default warning); the access log is sdrt's and always on")


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    """A server reachable from other machines needs a key, or an explicit --insecure."""
    if not is_loopback(host) and not api_key and not insecure:
        raise SdrtError(f"--host {host} is reachable from other machines: pass --api-key KEY (or set "
                        f"SDRT_API_KEY), or --insecure to serve without one on purpose")


def run(args: argparse.Namespace) -> int:
    from sdrt.serve.loras import LoraCatalog

    check_exposure(args.host, args.api_key, args.insecure)
    limits_from(args)
    LoraCatalog(args.lora_dir)  # a wrong --lora-dir is one line before any model loads
    from sdrt.serve.styles import Styles

    Styles(args.styles)  # so is a styles file that does not parse
    from sdrt.serve.setup import vae_folders

    vae_folders(args.vae)  # and a --vae that is not NAME=DIR of an export
    from sdrt.serve.controlnets import ControlNetCatalog

    ControlNetCatalog(args.controlnet_dir)
    if args.ray:
        from sdrt.serve.ray_serve import run_ray_serve

        return run_ray_serve(args)
    import uvicorn

    from sdrt.serve import access_log
    from sdrt.serve.app import create_app

    service = build_service(args)
    app = create_app(service, api_key=args.api_key, cors_origins=tuple(args.cors_origin),
                     log_prompts=args.log_prompts)
    access_log.to_stderr()
    print(f"sdrt serve: {', '.join(service.pipelines)} on http://{args.host}:{args.port}/ "
          f"({'API key required' if args.api_key else 'no API key'})", flush=True)
    try:
        # access_log=False: sdrt's access log (with images and timing) replaces uvicorn's, no duplicates
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    finally:
        service.close()
    return 0
