"""Scale-out: env slots on Ray actors (`ray_env.py`, started by `cluster.py`) and a torch DDP learner
(`ddp.py`).

Ray is optional and imported on first use only. This package file imports neither torch nor ray, so Ray
env actors (which import `z1.distributed.ray_env`) stay light; import `z1.distributed.ddp` explicitly.
"""

from z1.distributed.cluster import RAY_INSTALL_HINT, RayInfo, RayUnavailableError, require_ray, start_ray
from z1.distributed.ray_env import RayVectorEnv

__all__ = ["RAY_INSTALL_HINT", "RayInfo", "RayUnavailableError", "RayVectorEnv", "require_ray", "start_ray"]
