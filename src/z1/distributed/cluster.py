"""Start or join a Ray cluster: `local` starts one on this machine, `auto` joins a running one.

Ray is an optional extra (`pip install -e '.[ray]'`); it is imported only here and in `ray_env.py`, on
first use, so z1 without Ray works and `--ray` fails fast naming the install command.

A local cluster gets a bounded object store (observations and snapshots are small; the default of 30% of
RAM is not needed), no dashboard (or one bound to 127.0.0.1), and quiet logging. Ray's own gRPC ports
listen on every interface (Ray has no localhost-only switch); the clusters `ray.init` starts use token
authentication (Ray 2.60's default, `RAY_AUTH_MODE`). On a shared network keep those ports behind a
firewall (README, "Scaling out with Ray and torchrun").
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Literal

RAY_INSTALL_HINT = "pip install -e '.[ray]'  (or: pip install 'ray>=2.40' psutil)"
RAY_MODES = ("local", "auto")


class RayUnavailableError(RuntimeError):
    """Ray is not installed, or the requested cluster cannot be started/joined."""


def require_ray() -> Any:
    """The `ray` module, or a `RayUnavailableError` that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise RayUnavailableError(
            f"Ray is not installed in this environment ({e}); --ray needs it: {RAY_INSTALL_HINT}"
        ) from e
    return ray


@dataclass(frozen=True)
class RayInfo:
    """What `start_ray` did."""

    mode: str
    started: bool
    """False when this process was already connected to Ray (nothing was started)."""
    seconds: float
    """Wall time of `ray.init` (0 when already connected)."""
    cpus: float
    """CPUs of the whole cluster."""
    address: str


def start_ray(
    mode: Literal["local", "auto"] = "local",
    *,
    num_cpus: int | None = None,
    object_store_mb: int = 512,
    dashboard: bool = False,
    dashboard_host: str = "127.0.0.1",
    temp_dir: str | None = None,
    address: str | None = None,
    worker_niceness: int = 0,
) -> RayInfo:
    """Connect this process to Ray (idempotent: an existing connection is reused).

    mode="local": start a single-machine cluster with `num_cpus` CPUs (default: this machine's), an
    object store of `object_store_mb` MiB, the dashboard off unless `dashboard` (then on `dashboard_host`),
    and workers at `worker_niceness` (Ray's default, 15, starves the env actors, which are the rollout's
    workload, whenever anything else runs on the machine).
    mode="auto": join the cluster started with `ray start --head` (on this or another machine, found via
    `RAY_ADDRESS` or the local head's address file), or the explicit `address` ("host:port").
    """
    if mode not in RAY_MODES:
        raise ValueError(f"--ray must be one of {RAY_MODES}, got {mode!r}")
    ray = require_ray()
    if ray.is_initialized():
        return RayInfo(mode, False, 0.0, _cluster_cpus(ray), _address(ray))
    if object_store_mb < 80:
        raise ValueError(f"object_store_mb must be >= 80 (Ray's minimum is ~75 MiB), got {object_store_mb}")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    t0 = time.perf_counter()
    common: dict[str, Any] = {"logging_level": "warning", "log_to_driver": True}
    try:
        if mode == "local":
            ray.init(
                num_cpus=num_cpus or os.cpu_count() or 1,
                object_store_memory=object_store_mb * 2**20,
                include_dashboard=dashboard,
                dashboard_host=dashboard_host,
                _temp_dir=temp_dir,
                _system_config={"worker_niceness": worker_niceness},
                **common,
            )
        else:
            ray.init(address=address or "auto", **common)
    except ConnectionError as e:
        raise RayUnavailableError(
            f"--ray auto found no running Ray cluster ({e}); start one with `ray start --head "
            "--node-ip-address=<this machine's IP>` (and `ray start --address=<head-ip>:6379` on the "
            "others), or use --ray local"
        ) from e
    return RayInfo(mode, True, time.perf_counter() - t0, _cluster_cpus(ray), _address(ray))


def _cluster_cpus(ray: Any) -> float:
    return float(ray.cluster_resources().get("CPU", 0.0))


def _address(ray: Any) -> str:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # older Ray: no gcs_address on the runtime context
        return "?"
