"""RoboCasa / robomimic HDF5 demonstration reader (docs/environments.md#robocasa-demonstrations).

Needs h5py (extra `robomimic`).

Layout read:
    data                 attrs env_args = JSON {env_name, env_kwargs, ...}
      demo_<n>           attrs ep_meta = JSON {lang, ...} (RoboCasa), num_samples
        actions          (N, d)
        obs/<key>        proprio (N, k) and camera images (N, y, x, 3) uint8
    mask/<filter_key>    names of the demos in a subset (e.g. 50_demos, train)

Action order. z1 uses the env / v0.2 HDF5 order of PandaOmron, EEF first. Other exports name their blocks in
another order; pass the file's order as `action_order` and the reader permutes every row into z1's order:

| block        | dims | z1 / env / v0.2 HDF5 | GR00T / RoboCasa365 LeRobot (`modality.json`) |
|--------------|------|----------------------|-----------------------------------------------|
| eef_pos      | 3    | 0:3                  | 5:8                                           |
| eef_rot      | 3    | 3:6                  | 8:11                                          |
| gripper      | 1    | 6                    | 11                                            |
| base_motion  | 4    | 7:11 (x, y, yaw, torso) | 0:4                                        |
| control_mode | 1    | 11                   | 4                                             |

`ROBOCASA_ORDER` is the first column (no permutation); `GROOT_ORDER` the second. Always check a dataset's
own `meta/modality.json`: a silently permuted layout trains a policy that drives the wrong joints.

Language: `ep_meta["lang"]` of each demo, else the env name in `env_args`, else the file name.
Images: robomimic stores them upright already (its env wrapper flips robosuite's OpenGL frames); pass
`flip_images=True` for raw robosuite captures.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from z1.data.errors import DatasetError
from z1.data.lerobot_frames import Episode, ImageSequence
from z1.data.lerobot_write import LeRobotWriter, make_features

ROBOCASA_SEGMENTS: dict[str, int] = {
    "eef_pos": 3,
    "eef_rot": 3,
    "gripper": 1,
    "base_motion": 4,
    "control_mode": 1,
}
ROBOCASA_ORDER: tuple[str, ...] = ("eef_pos", "eef_rot", "gripper", "base_motion", "control_mode")
GROOT_ORDER: tuple[str, ...] = ("base_motion", "control_mode", "eef_pos", "eef_rot", "gripper")
# The 16-D proprio of robomimic's official RoboCasa BC-T image policy.
ROBOCASA_STATE_KEYS: tuple[str, ...] = (
    "robot0_base_to_eef_pos",
    "robot0_base_to_eef_quat",
    "robot0_base_pos",
    "robot0_base_quat",
    "robot0_gripper_qpos",
)
ROBOCASA_CAMERAS: dict[str, str] = {
    "left": "robot0_agentview_left_image",
    "wrist": "robot0_eye_in_hand_image",
    "right": "robot0_agentview_right_image",
}


def action_permutation(
    file_order: Sequence[str],
    segments: Mapping[str, int] = ROBOCASA_SEGMENTS,
    target: Sequence[str] = ROBOCASA_ORDER,
) -> np.ndarray:
    """Index array p with z1_action = file_action[..., p] (file blocks in `file_order`, output `target`)."""
    if sorted(file_order) != sorted(target) or len(set(file_order)) != len(file_order):
        raise DatasetError(
            f"action_order {tuple(file_order)} must name each of the blocks {tuple(target)} exactly once"
        )
    unknown = [b for b in target if b not in segments]
    if unknown:
        raise DatasetError(f"action blocks {unknown} have no size in segments {dict(segments)}")
    start, pos = 0, {}
    for b in file_order:
        pos[b] = np.arange(start, start + segments[b])
        start += segments[b]
    return np.concatenate([pos[b] for b in target])


def _import_h5py():
    try:
        import h5py
    except ImportError as e:
        raise DatasetError("reading robomimic HDF5 needs h5py: `pip install h5py` (extra `robomimic`)") from e
    return h5py


def _attr_json(attrs: Any, key: str, where: str) -> dict[str, Any] | None:
    if key not in attrs:
        return None
    raw = attrs[key]
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        v = json.loads(raw)
    except (json.JSONDecodeError, TypeError) as e:
        raise DatasetError(f"{where}: attribute {key!r} is not valid JSON ({e})") from e
    return v if isinstance(v, dict) else None


@dataclass(frozen=True)
class _Demo:
    name: str
    length: int
    task: str


class RobomimicDataset:
    """Demos of one robomimic HDF5 file, with actions in z1's order. Images are read lazily from the file.

    Keep it open while reading images (`with open_robomimic(...) as ds:` or call `close()`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        action_order: Sequence[str] | None = None,
        camera_map: Mapping[str, str] | None = None,
        state_keys: Sequence[str] = ROBOCASA_STATE_KEYS,
        filter_key: str | None = None,
        segments: Mapping[str, int] = ROBOCASA_SEGMENTS,
        flip_images: bool = False,
    ) -> None:
        h5py = _import_h5py()
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: file is missing")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise DatasetError(f"{self.path}: cannot open as HDF5 (truncated or not HDF5?): {e}") from e
        try:
            self._setup(action_order, camera_map, state_keys, filter_key, segments, flip_images)
        except BaseException:
            self._f.close()
            raise

    def _setup(self, action_order, camera_map, state_keys, filter_key, segments, flip_images) -> None:
        f = self._f
        if "data" not in f:
            raise DatasetError(f"{self.path}: group 'data' is missing")
        data = f["data"]
        env_args = _attr_json(data.attrs, "env_args", f"{self.path}:/data") or {}
        self.env_name = str(env_args.get("env_name", self.path.stem))
        names = [k for k in data if re.fullmatch(r"demo_\d+", k)]
        if filter_key is not None:
            mk = f"mask/{filter_key}"
            if mk not in f:
                have = list(f["mask"]) if "mask" in f else []
                raise DatasetError(f"{self.path}: filter key {mk!r} is missing; available: {have}")
            keep = {n.decode() if isinstance(n, bytes) else str(n) for n in f[mk][()]}
            names = [n for n in names if n in keep]
        names.sort(key=lambda n: int(n.split("_")[1]))
        if not names:
            raise DatasetError(f"{self.path}: no demos (data/demo_N) found")
        self.camera_map = dict(camera_map) if camera_map is not None else {}
        self.cameras = tuple(self.camera_map)
        self.state_keys = tuple(state_keys)
        self.flip_images = flip_images
        first = data[names[0]]
        if "actions" not in first:
            raise DatasetError(f"{self.path}: dataset 'data/{names[0]}/actions' is missing")
        self.action_dim = int(first["actions"].shape[1])
        if action_order is None:
            self._perm = np.arange(self.action_dim)
        else:
            self._perm = action_permutation(action_order, segments, ROBOCASA_ORDER)
            if len(self._perm) != self.action_dim:
                raise DatasetError(
                    f"{self.path}: field 'data/{names[0]}/actions' has {self.action_dim} dims "
                    f"but action_order "
                    f"{tuple(action_order)} covers {len(self._perm)}"
                )
        dims = []
        for k in self.state_keys:
            key = f"data/{names[0]}/obs/{k}"
            if key not in f:
                have = list(first["obs"]) if "obs" in first else []
                raise DatasetError(f"{self.path}: state key {key!r} is missing; obs keys are {have}")
            shp = f[key].shape
            dims.append(int(np.prod(shp[1:])) if len(shp) > 1 else 1)
        self.state_dim = int(sum(dims))
        self.image_shapes: dict[str, tuple[int, ...]] = {}
        for cam, key in self.camera_map.items():
            full = f"data/{names[0]}/obs/{key}"
            if full not in f:
                raise DatasetError(f"{self.path}: camera {cam!r} -> {full!r} is missing")
            shp = f[full].shape
            if len(shp) != 4 or shp[3] != 3 or f[full].dtype != np.uint8:
                raise DatasetError(
                    f"{self.path}: {full!r} has shape {shp} {f[full].dtype}, expected (N, y, x, 3) uint8"
                )
            self.image_shapes[cam] = tuple(int(v) for v in shp[1:])
        demos = []
        for n in names:
            g = data[n]
            if "actions" not in g:
                raise DatasetError(f"{self.path}: dataset 'data/{n}/actions' is missing")
            meta = _attr_json(g.attrs, "ep_meta", f"{self.path}:/data/{n}") or {}
            task = str(meta.get("lang") or self.env_name)
            demos.append(_Demo(n, int(g["actions"].shape[0]), task))
        self._demos = demos
        self.tasks = sorted({d.task for d in demos})

    # ----------------------------------------------------------------------------------------------
    def __enter__(self) -> RobomimicDataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    @property
    def num_episodes(self) -> int:
        return len(self._demos)

    @property
    def num_frames(self) -> int:
        return sum(d.length for d in self._demos)

    def _images(self, demo: str, key: str, pos: np.ndarray) -> np.ndarray:
        uniq, inv = np.unique(pos, return_inverse=True)  # h5py needs increasing indices
        out = self._f[f"data/{demo}/obs/{key}"][uniq][inv]  # (k, y, x, 3)
        return out[:, ::-1].copy() if self.flip_images else out

    def episode(self, i: int) -> Episode:
        if not 0 <= i < len(self._demos):
            raise IndexError(f"episode {i} out of range: {self.path} has {len(self._demos)} demos")
        d = self._demos[i]
        g = self._f[f"data/{d.name}"]
        actions = np.asarray(g["actions"][()], np.float32)[:, self._perm]  # (e, d) in z1 order
        _check_finite(actions, f"{self.path}: 'data/{d.name}/actions'")
        parts = []
        for k in self.state_keys:
            v = np.asarray(g[f"obs/{k}"][()], np.float32)
            if v.shape[0] != d.length:
                raise DatasetError(
                    f"{self.path}: 'data/{d.name}/obs/{k}' has {v.shape[0]} rows but actions has {d.length}"
                )
            _check_finite(v.reshape(d.length, -1), f"{self.path}: 'data/{d.name}/obs/{k}'")
            parts.append(v.reshape(d.length, -1))
        state = np.concatenate(parts, 1) if parts else np.zeros((d.length, 0), np.float32)  # (e, s)
        images = {
            cam: ImageSequence(
                (lambda pos, key=key, name=d.name: self._images(name, key, pos)),
                d.length,
                self.image_shapes[cam],
            )
            for cam, key in self.camera_map.items()
        }
        return Episode(
            index=int(d.name.split("_")[1]), state=state, action=actions, images=images, task=d.task
        )

    def to_lerobot(
        self, out_root: str | os.PathLike, fps: float = 20.0, robot_type: str = "PandaOmron"
    ) -> Path:
        """Convert to a LeRobotDataset v3.0 directory (PNG images), actions in z1's order."""
        size = next(iter(self.image_shapes.values()))[:2] if self.image_shapes else (0, 0)
        if any(s[:2] != size for s in self.image_shapes.values()):
            raise DatasetError(
                f"{self.path}: cameras have different sizes {self.image_shapes}; cannot convert"
            )
        state_names = [f"{k}_{j}" for k in self.state_keys for j in range(self._key_dim(k))]
        action_names = [f"{b}_{j}" for b in ROBOCASA_ORDER for j in range(ROBOCASA_SEGMENTS[b])]
        if len(action_names) != self.action_dim:
            action_names = [f"action_{j}" for j in range(self.action_dim)]
        feats = make_features(state_names, action_names, self.cameras, size)
        with LeRobotWriter(out_root, fps, feats, robot_type) as w:
            for i in range(self.num_episodes):
                ep = self.episode(i)
                frames = {"observation.state": ep.state, "action": ep.action}
                frames.update({f"observation.images.{c}": np.asarray(ep.images[c]) for c in self.cameras})
                w.add_episode(frames, ep.task)
        return Path(out_root)

    def _key_dim(self, k: str) -> int:
        shp = self._f[f"data/{self._demos[0].name}/obs/{k}"].shape
        return int(np.prod(shp[1:])) if len(shp) > 1 else 1


def _check_finite(values: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(values), -1).any(axis=1))
        raise DatasetError(
            f"{where} has non-finite values (NaN or inf) in {len(rows)} row(s), first at row {int(rows[0])}; "
            "training on them would turn the weights into NaN: fix or drop this demo"
        )


def is_hdf5_path(path: str | os.PathLike) -> bool:
    """True for a file named *.hdf5 / *.h5 (a robomimic demo file), which SFT converts before training."""
    return Path(path).suffix.lower() in (".hdf5", ".h5")


def default_layout(path: str | os.PathLike) -> tuple[dict[str, str], tuple[str, ...]]:
    """The cameras and state keys SFT reads from a robomimic file when not told otherwise.

    Cameras: every (N, y, x, 3) uint8 `obs/<key>` of the first demo, named `<key>` without its `_image`
    suffix. State: `ROBOCASA_STATE_KEYS` when the file has them all, else every other numeric `obs/<key>`
    with one value per frame or a vector of them, in name order."""
    h5py = _import_h5py()
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: file is missing")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise DatasetError(f"{p}: cannot open as HDF5 (truncated or not HDF5?): {e}") from e
    with f:
        names = [k for k in f.get("data", {}) if re.fullmatch(r"demo_\d+", k)]
        names.sort(key=lambda n: int(n[5:]))
        if not names:
            raise DatasetError(f"{p}: no demos (data/demo_N) found")
        obs = f[f"data/{names[0]}"].get("obs")
        if obs is None:
            raise DatasetError(f"{p}: group 'data/{names[0]}/obs' is missing")
        cams: dict[str, str] = {}
        others: list[str] = []
        for k in sorted(obs):
            ds = obs[k]
            if not hasattr(ds, "shape"):
                continue
            if len(ds.shape) == 4 and ds.shape[3] == 3 and ds.dtype == np.uint8:
                cams[k.removesuffix("_image")] = k
            elif len(ds.shape) in (1, 2) and np.issubdtype(ds.dtype, np.number):
                others.append(k)
    state = ROBOCASA_STATE_KEYS if all(k in others for k in ROBOCASA_STATE_KEYS) else tuple(others)
    return cams, state


def open_robomimic(
    path: str | os.PathLike,
    action_order: Sequence[str] | None = None,
    camera_map: Mapping[str, str] | None = None,
    **kw: Any,
) -> RobomimicDataset:
    """Open a robomimic HDF5 file. action_order: the file's action blocks (see the module table); None means
    the file is already in z1's (env) order. camera_map: z1 camera name -> obs key. Other keywords:
    state_keys, filter_key, segments, flip_images (see `RobomimicDataset`)."""
    return RobomimicDataset(path, action_order=action_order, camera_map=camera_map, **kw)
