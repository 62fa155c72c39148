"""RoboCasa action layouts: z1's 7-D arm action <-> the PandaOmron's 12-D action, and between named layouts.

The policy acts in z1's 7-D arm space `[dx, dy, dz, drx, dry, drz, grip]` (as for robosuite). The env, the
v0.2 HDF5 demos and `env_utils.convert_action` order the 12-D action EEF first (`ENV_ACTION_LAYOUT`); the
RoboCasa365 LeRobot datasets (GR00T `PandaOmron_modality.json`) order it base first
(`LEROBOT_ACTION_LAYOUT`). A third-party port shipped such a permutation silently, so every conversion goes
through named blocks, and the live controller's split is checked against `ENV_ACTION_LAYOUT`
(docs/environments.md#robocasa-actions). Pure numpy: importable without robocasa.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from z1.envs.base import EnvError
from z1.envs.robosuite import ACTION_NAMES

# (name, start, stop) of each action block (docs/environments.md#robocasa-actions).
ENV_ACTION_LAYOUT: tuple[tuple[str, int, int], ...] = (
    ("eef_pos", 0, 3),
    ("eef_rot", 3, 6),
    ("gripper", 6, 7),
    ("base_motion", 7, 10),  # base x, y, yaw velocity
    ("torso", 10, 11),
    ("control_mode", 11, 12),  # -1 arm mode, +1 base mode
)
LEROBOT_ACTION_LAYOUT: tuple[tuple[str, int, int], ...] = (
    ("base_motion", 0, 3),
    ("torso", 3, 4),  # GR00T's base_motion 0:4 = base x/y/yaw + torso
    ("control_mode", 4, 5),
    ("eef_pos", 5, 8),
    ("eef_rot", 8, 11),
    ("gripper", 11, 12),
)
ACTION_LAYOUTS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "env": ENV_ACTION_LAYOUT,
    "lerobot": LEROBOT_ACTION_LAYOUT,
}
ENV_ACTION_DIM = 12
ARM_MODE = -1.0
# z1's 7-D policy action -> blocks of the env action
POLICY_BLOCKS: tuple[tuple[str, int, int], ...] = (("eef_pos", 0, 3), ("eef_rot", 3, 6), ("gripper", 6, 7))


def _check_layout(layout: Sequence[tuple[str, int, int]], dim: int) -> None:
    covered = sorted((start, stop) for _, start, stop in layout)
    pos = 0
    for start, stop in covered:
        if start != pos or stop <= start:
            raise EnvError(f"robocasa: action layout {list(layout)} has a gap or overlap at index {pos}")
        pos = stop
    if pos != dim:
        raise EnvError(f"robocasa: action layout {list(layout)} covers {pos} dims, expected {dim}")


def to_env_action(action: np.ndarray) -> np.ndarray:
    """z1 7-D `[eef_pos(3), eef_rot(3), gripper]` -> PandaOmron 12-D env action (base/torso 0, mode -1)."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape[-1] != len(ACTION_NAMES):
        raise EnvError(f"robocasa: policy action has {a.shape[-1]} dims, expected 7 {list(ACTION_NAMES)}")
    out = np.zeros(a.shape[:-1] + (ENV_ACTION_DIM,), dtype=np.float64)  # (..., 12)
    env_blocks = {name: (start, stop) for name, start, stop in ENV_ACTION_LAYOUT}
    for name, start, stop in POLICY_BLOCKS:
        es, ee = env_blocks[name]
        out[..., es:ee] = a[..., start:stop]
    cs, _ = env_blocks["control_mode"]
    out[..., cs] = ARM_MODE
    return out


def from_env_action(env_action: np.ndarray) -> np.ndarray:
    """The 7 arm+gripper dims of a 12-D env-order action (e.g. a v0.2 HDF5 demo action)."""
    e = np.asarray(env_action, dtype=np.float64)
    if e.shape[-1] != ENV_ACTION_DIM:
        raise EnvError(f"robocasa: env action has {e.shape[-1]} dims, expected {ENV_ACTION_DIM}")
    out = np.zeros(e.shape[:-1] + (len(ACTION_NAMES),), dtype=np.float64)  # (..., 7)
    env_blocks = {name: (start, stop) for name, start, stop in ENV_ACTION_LAYOUT}
    for name, start, stop in POLICY_BLOCKS:
        es, ee = env_blocks[name]
        out[..., start:stop] = e[..., es:ee]
    return out


def reorder_action(action: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Permute 12-D actions between named layouts (`ACTION_LAYOUTS`: "env", "lerobot")."""
    for name in (src, dst):
        if name not in ACTION_LAYOUTS:
            raise EnvError(f"robocasa: unknown action layout {name!r}; choose from {sorted(ACTION_LAYOUTS)}")
    a = np.asarray(action, dtype=np.float64)
    if a.shape[-1] != ENV_ACTION_DIM:
        raise EnvError(f"robocasa: action has {a.shape[-1]} dims, expected {ENV_ACTION_DIM}")
    src_blocks = {n: (s, e) for n, s, e in ACTION_LAYOUTS[src]}
    out = np.empty_like(a)
    for name, start, stop in ACTION_LAYOUTS[dst]:
        s, e = src_blocks[name]
        if e - s != stop - start:
            raise EnvError(
                f"robocasa: block {name!r} has {e - s} dims in {src!r} but {stop - start} in {dst!r}"
            )
        out[..., start:stop] = a[..., s:e]
    return out


def check_env_action_split(split_indexes: Mapping[str, Sequence[int]]) -> None:
    """Check a live composite controller's `_action_split_indexes` against `ENV_ACTION_LAYOUT`.

    robosuite's HYBRID_MOBILE_BASE splits `[right (6), right_gripper (1), base (3), torso (1)]`; the control
    mode is the last element, outside the split.
    """
    expected = {"right": (0, 6), "right_gripper": (6, 7), "base": (7, 10), "torso": (10, 11)}
    got = {k: (int(v[0]), int(v[1])) for k, v in split_indexes.items()}
    if got != expected:
        raise EnvError(
            f"robocasa: the PandaOmron controller splits actions as {got}, but z1 maps actions with "
            f"{expected} (env/HDF5 order, docs/environments.md#robocasa-actions). "
            "A different robosuite version? "
            "Refusing to guess the permutation."
        )


for _layout in ACTION_LAYOUTS.values():
    _check_layout(_layout, ENV_ACTION_DIM)
