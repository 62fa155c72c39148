"""z1's writer against LeRobot's v3 layout: the files, keys and dtypes LeRobot's reader needs (no lerobot
import): integer fps, index features, statistics of every feature with q01..q99 (exact), per-episode
statistics, scalar columns for shape-[1] features, normal permissions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from z1.data.lerobot import DatasetError, LeRobotWriter, make_features, open_dataset
from z1.data.lerobot_write import INDEX_FEATURES
from z1.data.normalize import QUANTILE_KEYS, QUANTILES

LENGTHS = (5, 9, 4)
STATS = ("min", "max", "mean", "std", *QUANTILE_KEYS, "count")


def _episodes(rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    out = []
    for i, n in enumerate(LENGTHS):
        scene = rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8)
        scene[..., 1] //= 2  # channels with different distributions
        out.append(
            {
                "observation.state": (rng.normal(size=(n, 3)) + 3 * i).astype(np.float32),
                "action": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
                "observation.gripper": rng.uniform(0, 1, size=(n, 1)).astype(np.float32),
                "observation.images.scene": scene,
                "observation.images.wrist": rng.integers(100, 140, (n, 6, 5, 3), dtype=np.uint8),
            }
        )
    return out


@pytest.fixture()
def written(tmp_path: Path):
    old = os.umask(0o022)
    try:
        feats = make_features(["x", "y", "z"], ["a0", "a1"], ["scene", "wrist"], (6, 5))
        feats["observation.gripper"] = {"dtype": "float32", "shape": [1], "names": ["g"]}
        eps = _episodes(np.random.default_rng(0))
        root = tmp_path / "ds"
        with LeRobotWriter(root, 20.0, feats, "toy") as w:
            for ep, task in zip(eps, ("open", "close", "open")):
                w.add_episode(ep, task)
    finally:
        os.umask(old)
    return root, feats, eps


def _index_columns() -> dict[str, np.ndarray]:
    return {
        "timestamp": np.concatenate([np.arange(n) / 20 for n in LENGTHS]).astype(np.float32),
        "frame_index": np.concatenate([np.arange(n) for n in LENGTHS]),
        "episode_index": np.concatenate([np.full(n, i) for i, n in enumerate(LENGTHS)]),
        "index": np.arange(sum(LENGTHS)),
        "task_index": np.concatenate([np.full(n, [0, 1, 0][i]) for i, n in enumerate(LENGTHS)]),
    }


def _check_stats(st: dict, key: str, values: np.ndarray, image: bool) -> None:
    """values: (n, d) vectors or (n, y, x, 3) uint8 frames; st: one feature's LeRobot-layout stats."""
    assert sorted(st) == sorted(STATS), (key, sorted(st))
    assert st["count"] == [values.shape[0]]
    if image:
        flat = values.reshape(-1, 3).astype(np.float64) / 255.0  # (pixels, 3) in [0, 1]
        shape = (3, 1, 1)
    else:
        flat = values.reshape(values.shape[0], -1).astype(np.float64)
        shape = (flat.shape[1],)
    want = {
        "min": flat.min(0),
        "max": flat.max(0),
        "mean": flat.mean(0),
        "std": flat.std(0),
        **{k: np.quantile(flat, q, axis=0) for k, q in zip(QUANTILE_KEYS, QUANTILES)},
    }
    for k, v in want.items():
        got = np.asarray(st[k], np.float64)
        assert got.shape == shape, (key, k, got.shape)
        np.testing.assert_allclose(got.reshape(-1), v, rtol=1e-6, atol=1e-6, err_msg=f"{key}.{k}")
        if image:
            assert np.all((got >= 0) & (got <= 1)), (key, k)


def test_info_json(written) -> None:
    root, feats, _ = written
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["fps"] == 20 and type(info["fps"]) is int
    for k in ("total_episodes", "total_frames", "total_tasks", "chunks_size"):
        assert type(info[k]) is int, k
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, sum(LENGTHS), 2)
    assert info["data_files_size_in_mb"] == 100 and info["video_files_size_in_mb"] == 200
    assert info["splits"] == {"train": "0:3"}
    assert info["video_path"] is None
    assert info["data_path"].format(chunk_index=0, file_index=0) == "data/chunk-000/file-000.parquet"
    assert info["features"] == {**feats, **INDEX_FEATURES}
    for k, v in INDEX_FEATURES.items():
        assert v == {"dtype": "int64" if k != "timestamp" else "float32", "shape": [1], "names": None}
    assert info["features"]["observation.images.scene"]["names"] == ["height", "width", "channels"]
    assert (root / "meta" / "tasks.parquet").is_file()


def test_data_files_and_tasks(written) -> None:
    root, _, eps = written
    data = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet")
    s = data.schema
    assert s.field("observation.state").type == pa.list_(pa.float32(), 3)
    assert s.field("action").type == pa.list_(pa.float32(), 2)
    assert s.field("observation.gripper").type == pa.float32()  # shape [1]: a scalar column
    assert s.field("observation.images.scene").type == pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())]
    )
    assert s.field("timestamp").type == pa.float32()
    for k in ("frame_index", "episode_index", "index", "task_index"):
        assert s.field(k).type == pa.int64(), k
    for k, v in _index_columns().items():
        np.testing.assert_allclose(data.column(k).to_numpy(), v, atol=1e-7, err_msg=k)
    tasks = pq.read_table(root / "meta" / "tasks.parquet")
    pandas_meta = json.loads(tasks.schema.metadata[b"pandas"])
    assert pandas_meta["index_columns"] == ["task"]  # LeRobot reads the task string as the index
    assert tasks.to_pylist() == [{"task_index": 0, "task": "open"}, {"task_index": 1, "task": "close"}]
    ds = open_dataset(root)  # and z1 reads it back
    np.testing.assert_array_equal(ds.episode(1).state, eps[1]["observation.state"])
    np.testing.assert_array_equal(ds.episode(2).images["wrist"][1], eps[2]["observation.images.wrist"][1])
    assert ds.fps == 20


def test_stats_of_every_feature_are_exact(written) -> None:
    root, feats, eps = written
    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert list(stats) == [*feats, *INDEX_FEATURES]
    cat = {k: np.concatenate([e[k] for e in eps]) for k in feats}
    for k, v in {**cat, **{k: v[:, None] for k, v in _index_columns().items()}}.items():
        _check_stats(stats[k], k, v, image=k.startswith("observation.images."))
    assert type(stats["index"]["max"][0]) is int and stats["index"]["max"] == [sum(LENGTHS) - 1]


def test_episode_rows_and_per_episode_stats(written) -> None:
    root, feats, eps = written
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    t = pq.read_table(path)
    s = t.schema
    need = {
        "episode_index": pa.int64(),
        "length": pa.int64(),
        "data/chunk_index": pa.int64(),
        "data/file_index": pa.int64(),
        "dataset_from_index": pa.int64(),
        "dataset_to_index": pa.int64(),
        "meta/episodes/chunk_index": pa.int64(),
        "meta/episodes/file_index": pa.int64(),
        "tasks": pa.list_(pa.string()),
    }
    for k, typ in need.items():
        assert s.field(k).type == typ, k
    for k in (*feats, *INDEX_FEATURES):
        for st in STATS:
            assert f"stats/{k}/{st}" in s.names, (k, st)
    rows = t.to_pylist()
    idx = _index_columns()
    start = 0
    for i, (row, ep) in enumerate(zip(rows, eps)):
        n = LENGTHS[i]
        assert (row["episode_index"], row["length"], row["tasks"]) == (i, n, [["open", "close", "open"][i]])
        assert (row["dataset_from_index"], row["dataset_to_index"]) == (start, start + n)
        for k in feats:
            one = {st: row[f"stats/{k}/{st}"] for st in STATS}
            _check_stats(one, k, ep[k], image=k.startswith("observation.images."))
        for k, v in idx.items():
            one = {st: row[f"stats/{k}/{st}"] for st in STATS}
            _check_stats(one, k, v[start : start + n, None], image=False)
        start += n


def test_permissions_follow_the_umask(written) -> None:
    root, _, _ = written
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}
    for p, m in modes.items():
        assert m == (0o755 if p.is_dir() else 0o644), (p, oct(m))


def test_fps_must_be_whole(tmp_path: Path) -> None:
    feats = make_features(["x"], ["a"], [], (4, 4))
    with pytest.raises(DatasetError, match="whole number"):
        LeRobotWriter(tmp_path / "ds", 12.5, feats, "toy")
    with pytest.raises(DatasetError, match="index column"):
        LeRobotWriter(tmp_path / "ds", 10, {**feats, "timestamp": {"dtype": "float32", "shape": [1]}}, "toy")
    assert list(tmp_path.iterdir()) == []
