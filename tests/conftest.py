"""Test entry point: process-wide settings happen here, once; fixtures shared by several test modules."""

import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


# ---------------------------------------------------------------- shared fixtures


@pytest.fixture(scope="module")
def ray_slots() -> int:
    """Env slots of the module's `ray_venv`; a test module overrides this fixture to get another count."""
    return 2


@pytest.fixture(scope="module")
def ray_venv(ray_slots: int) -> Iterator[Any]:
    """A `RayVectorEnv` of `ray_slots` state-only Meta-World slots on 2 actors of a local 2-CPU Ray
    cluster, started for the module and shut down after it (so modules do not share actors that earlier
    tests killed, replaced or left holding a policy). Skipped without Ray."""
    ray = pytest.importorskip("ray")
    from z1.distributed import RayVectorEnv, start_ray

    info = start_ray("local", num_cpus=2, object_store_mb=200)
    assert info.started and info.cpus == 2
    # state-only observations: rendering would take ~4x the memory
    venv = RayVectorEnv("metaworld", ray_slots, num_actors=2, env_kwargs={"render": False})
    yield venv
    venv.close()
    ray.shutdown()
