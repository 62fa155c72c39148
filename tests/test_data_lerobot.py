"""LeRobotDataset v3 writer/reader round trip, v2.1 reading, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from z1.data.lerobot import (
    DatasetError,
    LeRobotWriter,
    check_compatible,
    encode_png,
    make_features,
    open_dataset,
)

S, D, Y, X = 3, 2, 16, 12


def _episode(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "observation.state": rng.normal(size=(n, S)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(n, D)).astype(np.float32),
        "observation.images.scene": rng.integers(0, 256, (n, Y, X, 3), dtype=np.uint8),
        "observation.images.wrist": rng.integers(0, 256, (n, Y, X, 3), dtype=np.uint8),
    }


def _write(
    root: Path, lengths=(5, 7, 4), tasks=("open the drawer", "push the puck", "open the drawer"), **kw
):
    rng = np.random.default_rng(0)
    eps = [_episode(rng, n) for n in lengths]
    feats = make_features(["x", "y", "z"], ["a0", "a1"], ["scene", "wrist"], (Y, X))
    with LeRobotWriter(root, 20, feats, "toy", **kw) as w:
        for ep, t in zip(eps, tasks):
            w.add_episode(ep, t)
    return eps


def test_v3_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    eps = _write(root)
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 16, 2)
    assert info["features"]["observation.images.scene"]["dtype"] == "image"
    assert info["features"]["observation.images.scene"]["shape"] == [Y, X, 3]
    ds = open_dataset(root)
    assert (ds.num_episodes, ds.num_frames, ds.fps, ds.cameras) == (3, 16, 20.0, ("scene", "wrist"))
    assert (ds.state_dim, ds.action_dim) == (S, D)
    assert ds.tasks == ["open the drawer", "push the puck"]
    for i, ref in enumerate(eps):
        ep = ds.episode(i)
        assert ep.task == ["open the drawer", "push the puck", "open the drawer"][i]
        np.testing.assert_array_equal(ep.state, ref["observation.state"])
        np.testing.assert_array_equal(ep.action, ref["action"])
        np.testing.assert_array_equal(np.asarray(ep.images["scene"]), ref["observation.images.scene"])
        np.testing.assert_array_equal(ep.images["wrist"][[3, 0]], ref["observation.images.wrist"][[3, 0]])
        np.testing.assert_array_equal(ep.images["wrist"][-1], ref["observation.images.wrist"][-1])
    # episode boundaries in the metadata and the index columns
    meta = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    assert [(m["dataset_from_index"], m["dataset_to_index"], m["length"]) for m in meta] == [
        (0, 5, 5),
        (5, 12, 7),
        (12, 16, 4),
    ]
    data = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet")
    assert data.column("index").to_pylist() == list(range(16))
    assert data.column("frame_index").to_pylist() == [*range(5), *range(7), *range(4)]
    assert data.column("task_index").to_pylist() == [0] * 5 + [1] * 7 + [0] * 4
    np.testing.assert_allclose(data.column("timestamp").to_numpy()[5:8], [0, 0.05, 0.1], atol=1e-7)
    # stats equal brute-force numpy over all frames (q01/q99 with linear interpolation)
    for key in ("observation.state", "action"):
        allv = np.concatenate([e[key] for e in eps]).astype(np.float64)
        st = ds.stats[key]
        np.testing.assert_allclose(st.mean, allv.mean(0), rtol=1e-6)
        np.testing.assert_allclose(st.std, allv.std(0), rtol=1e-5)
        np.testing.assert_allclose(st.q01, np.quantile(allv, 0.01, axis=0), rtol=1e-6)
        np.testing.assert_allclose(st.q99, np.quantile(allv, 0.99, axis=0), rtol=1e-6)
        raw = json.loads((root / "meta" / "stats.json").read_text())[key]
        np.testing.assert_allclose(raw["min"], allv.min(0))
        assert raw["count"] == [16]
        ep1 = meta[1]
        np.testing.assert_allclose(
            ep1[f"stats/{key}/mean"], eps[1][key].astype(np.float64).mean(0), rtol=1e-6
        )
    tasks = pq.read_table(root / "meta" / "tasks.parquet").to_pylist()
    assert tasks == [{"task_index": 0, "task": "open the drawer"}, {"task_index": 1, "task": "push the puck"}]


def test_v3_files_roll_over_by_size(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    eps = _write(root, lengths=(6, 6, 6, 6), tasks=("a",) * 4, data_files_size_in_mb=1e-3)
    files = sorted((root / "data").rglob("*.parquet"))
    assert len(files) == 4  # ~1 KB limit: every episode starts a new file
    ds = open_dataset(root)
    assert ds.num_episodes == 4
    np.testing.assert_array_equal(
        np.asarray(ds.episode(3).images["scene"]), eps[3]["observation.images.scene"]
    )
    np.testing.assert_array_equal(ds.episode(2).action, eps[2]["action"])


def test_writer_is_atomic(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    feats = make_features(["x", "y", "z"], ["a0", "a1"], ["scene", "wrist"], (Y, X))
    with pytest.raises(RuntimeError, match="boom"), LeRobotWriter(root, 20, feats, "toy") as w:
        w.add_episode(_episode(np.random.default_rng(0), 3), "t")
        assert not root.exists()
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DatasetError, match="no episodes"), LeRobotWriter(root, 20, feats, "toy"):
        pass
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DatasetError, match="'action' has shape"), LeRobotWriter(root, 20, feats, "toy") as w:
        bad = _episode(np.random.default_rng(0), 3)
        bad["action"] = bad["action"][:, :1]
        w.add_episode(bad, "t")
    assert list(tmp_path.iterdir()) == []
    _write(root)
    with pytest.raises(DatasetError, match="already exists"):
        LeRobotWriter(root, 20, feats, "toy")


def _write_v21(root: Path, with_episode_stats: bool = True) -> list[dict[str, np.ndarray]]:
    """A tiny v2.1 dataset written by hand: one parquet per episode, jsonl metadata."""
    rng = np.random.default_rng(1)
    lengths = [4, 6]
    eps = []
    (root / "meta").mkdir(parents=True)
    info = {
        "codebase_version": "v2.1",
        "robot_type": "toy",
        "total_episodes": 2,
        "total_frames": 10,
        "total_tasks": 2,
        "total_chunks": 1,
        "chunks_size": 1000,
        "fps": 10,
        "splits": {"train": "0:2"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": None,
        "features": {
            "observation.state": {"dtype": "float32", "shape": [S], "names": None},
            "action": {"dtype": "float32", "shape": [D], "names": None},
            "observation.images.top": {
                "dtype": "image",
                "shape": [Y, X, 3],
                "names": ["height", "width", "channel"],
            },
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "meta" / "tasks.jsonl").write_text(
        "\n".join(
            json.dumps(t) for t in [{"task_index": 0, "task": "stack"}, {"task_index": 1, "task": "lift"}]
        )
    )
    ep_lines, st_lines, start = [], [], 0
    img_struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for e, n in enumerate(lengths):
        state = rng.normal(size=(n, S)).astype(np.float32)
        action = rng.normal(size=(n, D)).astype(np.float32)
        imgs = rng.integers(0, 256, (n, Y, X, 3), dtype=np.uint8)
        eps.append({"state": state, "action": action, "img": imgs})
        t = pa.table(
            {
                "observation.state": pa.array(
                    state.tolist(), pa.list_(pa.float32())
                ),  # variable-length lists
                "action": pa.array(action.tolist(), pa.list_(pa.float32())),
                "observation.images.top": pa.array(
                    [{"bytes": encode_png(im), "path": f"frame_{i}.png"} for i, im in enumerate(imgs)],
                    img_struct,
                ),
                "timestamp": pa.array(np.arange(n, dtype=np.float32) / 10),
                "frame_index": pa.array(np.arange(n)),
                "episode_index": pa.array(np.full(n, e)),
                "index": pa.array(start + np.arange(n)),
                "task_index": pa.array(np.full(n, 1 - e)),
            }
        )
        p = root / "data" / "chunk-000" / f"episode_{e:06d}.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, p)
        ep_lines.append(json.dumps({"episode_index": e, "tasks": [["lift", "stack"][e]], "length": n}))
        st = {
            k: {
                "mean": v.mean(0).tolist(),
                "std": v.std(0).tolist(),
                "min": v.min(0).tolist(),
                "max": v.max(0).tolist(),
                "count": [n],
            }
            for k, v in (("observation.state", state), ("action", action))
        }
        st_lines.append(json.dumps({"episode_index": e, "stats": st}))
        start += n
    (root / "meta" / "episodes.jsonl").write_text("\n".join(ep_lines))
    if with_episode_stats:
        (root / "meta" / "episodes_stats.jsonl").write_text("\n".join(st_lines))
    return eps


def test_v21_read(tmp_path: Path) -> None:
    root = tmp_path / "v21"
    eps = _write_v21(root)
    ds = open_dataset(root)
    assert ds.version == "v2.1"
    assert (ds.num_episodes, ds.num_frames, ds.cameras, ds.tasks) == (2, 10, ("top",), ["stack", "lift"])
    for i, ref in enumerate(eps):
        ep = ds.episode(i)
        assert ep.task == ["lift", "stack"][i]
        np.testing.assert_array_equal(ep.state, ref["state"])
        np.testing.assert_array_equal(ep.action, ref["action"])
        np.testing.assert_array_equal(np.asarray(ep.images["top"]), ref["img"])
    allv = np.concatenate([e["action"] for e in eps]).astype(np.float64)
    # mean/std pooled from episodes_stats.jsonl, quantiles computed from data: all equal brute force
    np.testing.assert_allclose(ds.stats["action"].mean, allv.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.stats["action"].std, allv.std(0), rtol=1e-5)
    np.testing.assert_allclose(ds.stats["action"].q99, np.quantile(allv, 0.99, axis=0), rtol=1e-6)


def test_bad_inputs_name_file_and_field(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nope")
    root = tmp_path / "ds"
    _write(root)
    # camera / dims mismatch
    ds = open_dataset(root)
    with pytest.raises(DatasetError, match=r"info.json: field 'features' has no camera\(s\) \['base'\]"):
        check_compatible(ds, cameras=("scene", "base"))
    with pytest.raises(DatasetError, match=r"features.observation.state.shape' is \[3\].*expects \[4\]"):
        check_compatible(ds, state_dim=4)
    with pytest.raises(DatasetError, match=r"features.action.shape' is \[2\].*expects \[7\]"):
        check_compatible(ds, action_dim=7)
    with pytest.raises(DatasetError, match="padded action dim 1"):
        check_compatible(ds, max_action_dim=1)
    check_compatible(ds, cameras=("wrist",), state_dim=3, action_dim=2, max_action_dim=32)
    # truncated parquet
    f = root / "data" / "chunk-000" / "file-000.parquet"
    good = f.read_bytes()
    f.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"file-000.parquet: cannot read parquet"):
        open_dataset(root)
    f.write_bytes(good)
    # wrong info.json fields
    info_p = root / "meta" / "info.json"
    info = json.loads(info_p.read_text())
    info_p.write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    with pytest.raises(DatasetError, match="info.json: field 'codebase_version' is 'v1.6'"):
        open_dataset(root)
    info_p.write_text(json.dumps({k: v for k, v in info.items() if k != "fps"}))
    with pytest.raises(DatasetError, match="info.json: field 'fps' is missing"):
        open_dataset(root)
    info_p.write_text("{not json")
    with pytest.raises(DatasetError, match="info.json: not valid JSON"):
        open_dataset(root)
    info_p.unlink()
    with pytest.raises(DatasetError, match="info.json: file is missing"):
        open_dataset(root)
    info_p.write_text(json.dumps(info))
    # episode metadata disagreeing with the data
    ep_p = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    t = pq.read_table(ep_p)
    lengths = t.column("length").to_pylist()
    pq.write_table(
        t.set_column(t.column_names.index("length"), "length", pa.array([lengths[0] + 1, *lengths[1:]])), ep_p
    )
    with pytest.raises(DatasetError, match="field 'length' = 6"):
        open_dataset(root)


def test_empty_v21_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "v21"
    _write_v21(root)
    (root / "meta" / "episodes.jsonl").write_text("")
    for p in (root / "data").rglob("*.parquet"):
        p.unlink()
    with pytest.raises(DatasetError, match="empty"):
        open_dataset(root)


def test_corrupt_png_names_file_and_column(tmp_path: Path) -> None:
    root = tmp_path / "v21"
    _write_v21(root)
    p = root / "data" / "chunk-000" / "episode_000001.parquet"
    t = pq.read_table(p)
    col = t.column("observation.images.top").combine_chunks()
    b = col.field("bytes").to_pylist()
    b[2] = b"not a png"
    new = pa.StructArray.from_arrays([pa.array(b, pa.binary()), col.field("path")], names=["bytes", "path"])
    pq.write_table(
        t.set_column(t.column_names.index("observation.images.top"), "observation.images.top", new), p
    )
    ds = open_dataset(root)
    ds.episode(1).images["top"][1]  # other frames still decode
    with pytest.raises(DatasetError, match=r"episode_000001.parquet: column 'observation.images.top' row 6"):
        ds.episode(1).images["top"][2]
