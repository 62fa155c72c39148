"""State a MuJoCo snapshot needs beyond `mj_getState`: the Python-side attributes of robosuite objects.

robosuite keeps part of the simulation state in Python (controller goals, the gripper's rate-limited finger
command, step counters): restoring only MjData would replay different actions. `capture_attrs` copies the
plain attributes of an object (scalars, owned numpy arrays, dicts/tuples of those) and leaves out arrays
that view MuJoCo memory, which `physics_state` already covers and which must not be written behind the
simulator's back. `model_fingerprint` identifies a model build, so a snapshot is restored only into the
model it came from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

_SCALARS = (bool, int, float, str, np.generic, type(None))


def _owns_memory(arr: np.ndarray) -> bool:
    """True if `arr` (or the array it views) owns its buffer, i.e. it is not a view of MuJoCo memory."""
    root = arr
    while isinstance(root.base, np.ndarray):
        root = root.base
    return root.base is None


def _is_plain(v: Any) -> bool:
    if isinstance(v, _SCALARS):
        return True
    return isinstance(v, np.ndarray) and v.dtype != object and _owns_memory(v)


def _copy_plain(v: Any) -> Any:
    return v.copy() if isinstance(v, np.ndarray) else v


def capture_attrs(obj: Any) -> dict[str, Any]:
    """Copies of the plain attributes of `obj`: scalars, owned numpy arrays, and dicts/tuples of those.

    Arrays that view MuJoCo memory (MjData/MjModel fields) are skipped: they are state already covered by
    `mj_getState`, and overwriting them would write into the simulator.
    """
    out: dict[str, Any] = {}
    for k, v in vars(obj).items():
        if _is_plain(v):
            out[k] = _copy_plain(v)
        elif (
            isinstance(v, dict)
            and v
            and all(isinstance(x, str) for x in v)
            and all(_is_plain(x) for x in v.values())
        ):
            out[k] = {kk: _copy_plain(x) for kk, x in v.items()}
        elif isinstance(v, tuple) and v and all(_is_plain(x) for x in v):
            out[k] = tuple(_copy_plain(x) for x in v)
    return out


def restore_attrs(obj: Any, attrs: Mapping[str, Any]) -> None:
    """Put back what `capture_attrs` took. Owned arrays of matching shape are written in place, so other
    holders of the same array (views, shared references) see the restored values."""
    for k, v in attrs.items():
        cur = getattr(obj, k, None)
        if (
            isinstance(v, np.ndarray)
            and isinstance(cur, np.ndarray)
            and cur.shape == v.shape
            and cur.dtype == v.dtype
            and cur.flags.writeable
            and _owns_memory(cur)
        ):
            cur[...] = v
        elif isinstance(v, dict):
            setattr(obj, k, {kk: _copy_plain(x) for kk, x in v.items()})
        elif isinstance(v, tuple):
            setattr(obj, k, tuple(_copy_plain(x) for x in v))
        else:
            setattr(obj, k, _copy_plain(v))


def physics_state(model: Any, data: Any) -> np.ndarray:
    """`mj_getState(mjSTATE_INTEGRATION)`: qpos, qvel, act, time, ctrl, warmstart, mocap, applied forces."""
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    st = np.empty(mujoco.mj_stateSize(model, spec), dtype=np.float64)
    mujoco.mj_getState(model, data, st, spec)
    return st


def set_physics_state(model: Any, data: Any, state: np.ndarray) -> None:
    """Inverse of `physics_state`, with derived quantities refreshed and `qacc_warmstart` kept exact."""
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    mujoco.mj_setState(model, data, state, spec)
    mujoco.mj_forward(model, data)  # xpos, site_xpos, contacts... for observations and controllers
    mujoco.mj_setState(model, data, state, spec)  # mj_forward (3.3.0) rewrote qacc_warmstart


def model_fingerprint(model: Any) -> str:
    """A digest of the model fields that differ between builds (sizes, poses, masses, dimensions)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(np.asarray([model.nq, model.nv, model.nu, model.nbody, model.ngeom], dtype=np.int64).tobytes())
    for name in ("geom_size", "geom_pos", "body_pos", "body_quat", "body_mass", "qpos0", "jnt_range"):
        h.update(np.ascontiguousarray(getattr(model, name)).tobytes())
    return h.hexdigest()
