"""Scale-out: env slots on Ray actors (`ray_env.py`, started by `cluster.py`), optionally with a copy of
the policy computing their chunks (`ray_policy.py`, `--rollout.inference actors`), and a torch DDP learner
(`ddp.py`).

Ray is optional and imported on first use only. This package file imports neither torch nor ray, so Ray
env actors (which import `z1.distributed.ray_env`) stay light; import `z1.distributed.ddp` and
`z1.distributed.ray_policy` (torch) explicitly.
"""

from z1.distributed.cluster import RAY_INSTALL_HINT, RayInfo, RayUnavailableError, require_ray, start_ray
from z1.distributed.ray_env import RayVectorEnv

__all__ = ["RAY_INSTALL_HINT", "RayInfo", "RayUnavailableError", "RayVectorEnv", "require_ray", "start_ray"]
