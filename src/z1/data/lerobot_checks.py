"""Does a dataset fit a policy? Cameras, image sizes, state and action dims, checked before training starts.

Each mismatch is a `DatasetError` that names the info.json field, lists what the dataset has and says
which `--data.*` flag maps it (with a ready-made `--data.cameras` value where one exists), so a wrong
dataset fails in the first second instead of at the first batch.
"""

from __future__ import annotations

import numpy as np

from z1.data.errors import DatasetError
from z1.data.lerobot_read import ACTION, STATE, Dataset
from z1.data.mapping import IMAGE_PREFIX


def _camera_hint(ds: Dataset, cameras: tuple[str, ...]) -> str:
    """A --data.cameras value that would feed every slot in `cameras`, or what stands in the way."""
    inverse = {key: name for name, key in ds.dataset_cameras.items()}
    pairs = {inverse[ds.camera_keys[c]]: c for c in cameras if c in ds.camera_keys}  # dataset name -> slot
    missing = [c for c in cameras if c not in ds.camera_keys]
    free = [n for n in ds.dataset_cameras if n not in pairs]
    for name, slot in zip(free, missing):
        pairs[name] = slot
    flag = "--data.cameras " + ",".join(f"{n}:{s}" for n, s in pairs.items() if n != s)
    if len(free) < len(missing):
        return (
            f"The dataset has {len(ds.dataset_cameras)} camera(s) for the policy's {len(cameras)} slot(s), "
            f"so even {flag} leaves {missing[len(free) :]} empty; use a policy preset with fewer camera "
            "slots."
        )
    return f"Map the dataset's cameras onto the slots with {flag} (dataset:slot pairs, comma-separated)."


def check_images(ds: Dataset, cameras: tuple[str, ...] | list[str]) -> None:
    """Raise DatasetError unless every camera in `cameras` is (y, x, 3) in info.json, all of one size, and
    the first decoded frame has that shape (what the batches stack)."""
    info = ds.root / "meta" / "info.json"
    shapes: dict[str, tuple[int, ...]] = {}
    for cam in cameras:
        key = ds.camera_keys.get(cam)
        if key is None:
            continue  # check_compatible names missing cameras
        shape = ds.file_features[key].get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) != 3
            or shape[2] != 3
            or not all(isinstance(v, int) and v > 0 for v in shape)
        ):
            raise DatasetError(
                f"{info}: field 'features.{key}.shape' is {shape!r}; a camera must be [height, width, 3]"
            )
        shapes[cam] = tuple(shape)
        got = ds.frame_images(cam, np.asarray([0]))
        if tuple(got.shape[1:]) != tuple(shape):
            raise DatasetError(
                f"{info}: field 'features.{key}.shape' says {shape} but the stored frames of camera {cam!r} "
                f"decode to {list(got.shape[1:])}; fix info.json or re-encode the images"
            )
    if len(set(shapes.values())) > 1:
        raise DatasetError(
            f"{info}: the policy's cameras have different image sizes {shapes}; every camera fed to the "
            "policy must have the same [height, width, 3] (resize the images, or map other cameras with "
            "--data.cameras)"
        )


def check_compatible(
    ds: Dataset,
    cameras: tuple[str, ...] | list[str] | None = None,
    state_dim: int | None = None,
    action_dim: int | None = None,
    max_action_dim: int | None = None,
) -> None:
    """Raise DatasetError if the dataset lacks a camera or its state/action dims differ from the caller's.

    cameras: the policy's camera slots, compared with the dataset's cameras after `ds.data`'s mapping.
    max_action_dim: the model's padded action dim; the dataset's action dim must not exceed it.
    """
    info = ds.root / "meta" / "info.json"
    keys = {STATE: "+".join(ds.data.state_keys()), ACTION: "+".join(ds.data.action_keys())}
    if max_action_dim is not None and ds.action_dim > max_action_dim:
        raise DatasetError(
            f"{info}: field 'features.{keys[ACTION]}.shape' is [{ds.action_dim}], more than the model's "
            f"padded action dim {max_action_dim}; use a policy preset with action_dim >= {ds.action_dim} "
            f"or choose another action with --data.action-key. {ds.describe_features()}"
        )
    for key, got, want, flag in (
        (STATE, ds.state_dim, state_dim, "--data.state-key"),
        (ACTION, ds.action_dim, action_dim, "--data.action-key"),
    ):
        if want is not None and got != want:
            raise DatasetError(
                f"{info}: field 'features.{keys[key]}.shape' is [{got}] but the policy/env expects [{want}]"
                f" for {key}. {ds.describe_features()} Choose the feature with {flag}."
            )
    if cameras is not None:
        cameras = tuple(cameras)
        missing = [c for c in cameras if c not in ds.cameras]
        if missing:
            mapped = f" after --data.cameras {ds.data.cameras}" if ds.data.cameras else ""
            raise DatasetError(
                f"{info}: field 'features' has no camera(s) {missing} ({IMAGE_PREFIX}<cam>) for the "
                f"policy's camera slots {list(cameras)}; the dataset provides {list(ds.cameras)}{mapped}. "
                f"{ds.describe_features()} {_camera_hint(ds, cameras)}"
            )
