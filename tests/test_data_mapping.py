"""Datasets from elsewhere: --data.cameras / --data.state-key / --data.action-key map a dataset's names onto
the policy's, mismatches fail in one paragraph naming the features and the flag, and --data.stats chooses
between exact statistics and the dataset's stats.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from foreign_data import MAPPING, STATE_KEY, lerobot_style_stats, write_foreign_dataset
from z1.data.lerobot import DatasetError, check_compatible, open_dataset
from z1.data.mapping import DataConfig
from z1.data.normalize import normalization_from_dataset


@pytest.fixture()
def foreign(tmp_path: Path) -> Path:
    return write_foreign_dataset(tmp_path / "foreign")


def _raw(root: Path):
    """The dataset as stored: joints, action and front/wrist_cam frames, read under their own names."""
    ds = open_dataset(root, DataConfig(state_key=STATE_KEY))
    rows = np.arange(ds.num_frames)
    return ds.state, ds.action, ds.frame_images("front", rows), ds.frame_images("wrist_cam", rows)


def test_mapping_gives_the_policy_names(foreign: Path) -> None:
    joints, action, front, wrist_cam = _raw(foreign)
    ds = open_dataset(foreign, DataConfig(cameras=MAPPING, state_key=STATE_KEY))
    assert ds.cameras == ("scene", "wrist")
    assert set(ds.features) >= {"observation.state", "action", "observation.images.scene"}
    assert "observation.images.front" not in ds.features and STATE_KEY not in ds.features
    assert ds.features["observation.state"]["names"] == ["j0", "j1", "j2", "g"]
    assert ds.file_features[STATE_KEY]["shape"] == [4]  # info.json's own entries stay available
    check_compatible(ds, cameras=("scene", "wrist"), state_dim=4, action_dim=4, max_action_dim=4)
    np.testing.assert_array_equal(ds.state, joints)
    np.testing.assert_array_equal(ds.action, action)
    rows = np.arange(ds.num_frames)
    np.testing.assert_array_equal(ds.frame_images("scene", rows), front)
    np.testing.assert_array_equal(np.asarray(ds.episode(1).images["wrist"]), wrist_cam[12:24])
    # a swap is a mapping too; the full feature key works on the left
    sw = open_dataset(
        foreign,
        DataConfig(cameras="observation.images.front:wrist_cam,wrist_cam:front", state_key=STATE_KEY),
    )
    assert set(sw.cameras) == {"front", "wrist_cam"}
    np.testing.assert_array_equal(sw.frame_images("wrist_cam", rows[:3]), front[:3])


def test_unmapped_dataset_fails_naming_features_and_flag(foreign: Path) -> None:
    with pytest.raises(DatasetError) as e:
        open_dataset(foreign)
    msg = str(e.value)
    assert "\n" not in msg
    for part in (
        "no state feature 'observation.state'",
        "front [64, 64, 3] (image)",
        "wrist_cam [64, 64, 3] (image)",
        "observation.joints [4]",
        "action [4]",
        "--data.state-key",
    ):
        assert part in msg, (part, msg)
    ds = open_dataset(foreign, DataConfig(state_key=STATE_KEY))
    with pytest.raises(DatasetError) as e:
        check_compatible(ds, cameras=("scene", "wrist"))
    msg = str(e.value)
    assert "\n" not in msg
    assert "no camera(s) ['scene', 'wrist']" in msg
    assert "front [64, 64, 3] (image), wrist_cam [64, 64, 3] (image)" in msg
    assert "--data.cameras front:scene,wrist_cam:wrist" in msg
    # more slots than cameras: the hint says so instead of suggesting an impossible mapping
    with pytest.raises(DatasetError, match="2 camera\\(s\\) for the policy's 3 slot\\(s\\)"):
        check_compatible(ds, cameras=("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"))
    with pytest.raises(DatasetError, match=r"has no action feature 'act'.*--data.action-key"):
        open_dataset(foreign, DataConfig(state_key=STATE_KEY, action_key="act"))
    with pytest.raises(DatasetError, match=r"observation.images.front' is image .* not a vector"):
        open_dataset(foreign, DataConfig(state_key="observation.images.front"))
    with pytest.raises(DatasetError, match=r"maps camera\(s\) \['top'\].*front \[64, 64, 3\]"):
        open_dataset(foreign, DataConfig(cameras="top:scene", state_key=STATE_KEY))


def test_bad_flag_values_are_rejected() -> None:
    with pytest.raises(DatasetError, match="not a `dataset:slot` pair"):
        DataConfig(cameras="front")
    with pytest.raises(DatasetError, match="slot 'scene' is the target of two cameras"):
        DataConfig(cameras="front:scene,top:scene")
    with pytest.raises(DatasetError, match="camera 'front' is mapped twice"):
        DataConfig(cameras="front:scene,front:wrist")
    with pytest.raises(DatasetError, match="--data.state-key"):
        DataConfig(state_key="a,,b")
    assert DataConfig().is_identity and not DataConfig(cameras=MAPPING).is_identity


def test_concatenated_keys(foreign: Path) -> None:
    joints, action, *_ = _raw(foreign)
    ds = open_dataset(foreign, DataConfig(cameras=MAPPING, state_key=f"{STATE_KEY},action"))
    assert ds.state_dim == 8 and ds.features["observation.state"]["shape"] == [8]
    np.testing.assert_array_equal(ds.state, np.concatenate([joints, action], 1))
    both = np.concatenate([joints, action], 1).astype(np.float64)
    np.testing.assert_allclose(ds.stats["observation.state"].q99, np.quantile(both, 0.99, axis=0), rtol=1e-6)
    # the dataset's own stats are concatenated per key as well
    dd = open_dataset(foreign, DataConfig(cameras=MAPPING, state_key=f"{STATE_KEY},action", stats="dataset"))
    raw = json.loads((foreign / "meta" / "stats.json").read_text())
    np.testing.assert_allclose(
        dd.stats["observation.state"].mean, raw[STATE_KEY]["mean"] + raw["action"]["mean"], rtol=1e-6
    )


def test_exact_stats_by_default_and_dataset_stats_on_request(foreign: Path) -> None:
    joints, action, *_ = _raw(foreign)
    lr = lerobot_style_stats(foreign)  # quantiles = averages of per-episode quantiles, as LeRobot v3 writes
    ds = open_dataset(foreign, DataConfig(cameras=MAPPING, state_key=STATE_KEY))
    for key, data, src in (("observation.state", joints, STATE_KEY), ("action", action, "action")):
        allv = data.astype(np.float64)
        st = ds.stats[key]
        np.testing.assert_allclose(st.q01, np.quantile(allv, 0.01, axis=0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(st.q99, np.quantile(allv, 0.99, axis=0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(st.mean, allv.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st.std, allv.std(0), rtol=1e-5)
        full = ds.full_stats[key]
        for q, name in ((0.1, "q10"), (0.5, "q50"), (0.9, "q90")):
            np.testing.assert_allclose(getattr(full, name), np.quantile(allv, q, axis=0), rtol=1e-12)
        dd = open_dataset(foreign, DataConfig(cameras=MAPPING, state_key=STATE_KEY, stats="dataset"))
        for k in ("mean", "std", "q01", "q99"):
            np.testing.assert_allclose(getattr(dd.stats[key], k), lr[src][k], rtol=1e-6)
    # on this dataset the averaged quantiles cover a fraction of the action range
    exact_w = ds.stats["action"].q99 - ds.stats["action"].q01
    avg_w = np.asarray(lr["action"]["q99"]) - np.asarray(lr["action"]["q01"])
    assert np.all(avg_w < 0.5 * exact_w), (avg_w, exact_w)
    # and the normalization follows the choice
    norm = normalization_from_dataset(ds)
    y = norm.normalize_action(action)
    assert np.mean(np.abs(y) <= 1.0) > 0.95
    y_lr = normalization_from_dataset(dd).normalize_action(action)
    assert np.abs(y_lr).max() > 10  # trusting the averaged quantiles blows the actions far out of [-1, 1]
