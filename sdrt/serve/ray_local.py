"""The local Ray instance sdrt starts (`sdrt serve --ray`, `sdrt batch --ray` without --ray-address).

It listens on 127.0.0.1 only, starts no dashboard and reports no usage. Ray turns a node address of
127.0.0.1 into the machine's network address unless it runs "local only" (its macOS / Windows mode,
switched by RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which Ray reads when it is imported), so the
variables are set before `import ray`. With them, Ray's GCS, raylet, agents, workers and the Serve
proxy and controller bind 127.0.0.1; Ray 2.60 still opens one port on all interfaces per Serve
replica (its inter-deployment gRPC server, address fixed in Ray), under Ray's token authentication.
"""

from __future__ import annotations

import os
from typing import Any

#: set (unless the user set them) before Ray is imported
LOCAL_ONLY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def local_only_env() -> None:
    for key, value in LOCAL_ONLY_ENV.items():
        os.environ.setdefault(key, value)


def init_local(num_cpus: int, log_to_driver: bool = True) -> Any:
    """Start a Ray instance on this machine only (stop it with ray.shutdown())."""
    local_only_env()
    import ray

    return ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                    ignore_reinit_error=True, log_to_driver=log_to_driver)
