"""robomimic HDF5 reading: demos, language, cameras, action-order permutation, conversion, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from z1.data.errors import DatasetError
from z1.data.lerobot import open_dataset
from z1.data.robomimic import GROOT_ORDER, ROBOCASA_STATE_KEYS, action_permutation, open_robomimic

h5py = pytest.importorskip("h5py")

CAMS = {"left": "robot0_agentview_left_image", "wrist": "robot0_eye_in_hand_image"}


def _z1_actions(n: int, rng) -> np.ndarray:
    """Actions in z1/env order: eef_pos 0:3, eef_rot 3:6, gripper 6, base 7:11, mode 11 (distinct values)."""
    a = rng.normal(size=(n, 12)).astype(np.float32)
    a[:, 11] = -1.0
    return a


def _to_groot(a: np.ndarray) -> np.ndarray:
    """The GR00T layout, written out by hand: base 0:4, mode 4, eef_pos 5:8, eef_rot 8:11, gripper 11."""
    return np.concatenate([a[:, 7:11], a[:, 11:12], a[:, 0:3], a[:, 3:6], a[:, 6:7]], 1)


def _write(path: Path, groot: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    demos = []
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "PnPCounterToCab", "env_kwargs": {}})
        for n_i, (name, n) in enumerate([("demo_10", 4), ("demo_2", 6), ("demo_1", 5)]):
            g = data.create_group(name)
            a = _z1_actions(n, rng)
            g.create_dataset("actions", data=_to_groot(a) if groot else a)
            if n_i != 2:
                g.attrs["ep_meta"] = json.dumps({"lang": f"pick the {name} object", "layout_id": 1})
            obs = g.create_group("obs")
            st = {
                k: rng.normal(size=(n, d)).astype(np.float32)
                for k, d in zip(ROBOCASA_STATE_KEYS, (3, 4, 3, 4, 2))
            }
            for k, v in st.items():
                obs.create_dataset(k, data=v)
            imgs = {k: rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for k in CAMS.values()}
            for k, v in imgs.items():
                obs.create_dataset(k, data=v)
            demos.append({"name": name, "a": a, "state": np.concatenate(list(st.values()), 1), "imgs": imgs})
        f.create_dataset("mask/train", data=np.array([b"demo_1", b"demo_10"]))
    return demos


def test_permutation_table() -> None:
    p = action_permutation(GROOT_ORDER)
    # z1 eef_pos (0:3) comes from GR00T 5:8, gripper (6) from 11, base (7:11) from 0:4, mode (11) from 4
    assert p.tolist() == [5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4]
    with pytest.raises(DatasetError, match="exactly once"):
        action_permutation(("eef_pos", "eef_pos", "gripper", "base_motion", "control_mode"))


def test_read_groot_order_into_z1_order(tmp_path: Path) -> None:
    path = tmp_path / "demo.hdf5"
    demos = _write(path, groot=True)
    by_name = {d["name"]: d for d in demos}
    with open_robomimic(path, action_order=GROOT_ORDER, camera_map=CAMS) as ds:
        assert ds.num_episodes == 3 and ds.num_frames == 15 and ds.state_dim == 16 and ds.action_dim == 12
        assert ds.cameras == ("left", "wrist")
        for i, name in enumerate(["demo_1", "demo_2", "demo_10"]):  # numeric order
            ep = ds.episode(i)
            ref = by_name[name]
            assert ep.index == int(name.split("_")[1])
            np.testing.assert_array_equal(ep.action, ref["a"])  # back in z1 order
            np.testing.assert_array_equal(ep.state, ref["state"])
            np.testing.assert_array_equal(
                ep.images["wrist"][[2, 0, 2]], ref["imgs"][CAMS["wrist"]][[2, 0, 2]]
            )
            assert ep.task == ("PnPCounterToCab" if name == "demo_1" else f"pick the {name} object")
        out = ds.to_lerobot(tmp_path / "lr", fps=20)
    lr = open_dataset(out)
    assert lr.num_episodes == 3 and lr.action_dim == 12 and lr.cameras == ("left", "wrist")
    np.testing.assert_array_equal(lr.episode(2).action, by_name["demo_10"]["a"])
    np.testing.assert_array_equal(
        np.asarray(lr.episode(0).images["left"]), by_name["demo_1"]["imgs"][CAMS["left"]]
    )


def test_filter_key_flip_and_default_order(tmp_path: Path) -> None:
    path = tmp_path / "demo.hdf5"
    demos = _write(path, groot=False)
    with open_robomimic(path, None, CAMS, filter_key="train", flip_images=True) as ds:
        assert ds.num_episodes == 2
        np.testing.assert_array_equal(ds.episode(1).action, demos[0]["a"])  # demo_10, no permutation
        np.testing.assert_array_equal(
            ds.episode(1).images["left"][0], demos[0]["imgs"][CAMS["left"]][0][::-1]
        )


def test_bad_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "demo.hdf5"
    _write(path, groot=True)
    with pytest.raises(DatasetError, match="demo.hdf5: camera 'top' -> 'data/demo_1/obs/nope' is missing"):
        open_robomimic(path, GROOT_ORDER, {"top": "nope"})
    with pytest.raises(DatasetError, match="filter key 'mask/valid' is missing"):
        open_robomimic(path, GROOT_ORDER, CAMS, filter_key="valid")
    with pytest.raises(DatasetError, match="actions' has 12 dims"):
        open_robomimic(
            path,
            GROOT_ORDER,
            CAMS,
            segments={"eef_pos": 3, "eef_rot": 3, "gripper": 1, "base_motion": 3, "control_mode": 1},
        )
    bad = tmp_path / "trunc.hdf5"
    bad.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError, match="trunc.hdf5: cannot open as HDF5"):
        open_robomimic(bad, GROOT_ORDER, CAMS)
    with pytest.raises(DatasetError, match="missing.hdf5: file is missing"):
        open_robomimic(tmp_path / "missing.hdf5")
