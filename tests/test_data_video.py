"""mp4 video features (LeRobot v3): frame decoded at from_timestamp + timestamp, with PyAV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from z1.data.lerobot import DatasetError, LeRobotWriter, make_features, open_dataset

FPS, Y, X = 10, 32, 32


def _colour(k: int) -> np.ndarray:
    """A flat frame whose colour identifies global video frame k (robust to lossy coding)."""
    return np.full((Y, X, 3), [(37 * k) % 256, (90 + 53 * k) % 256, 200 - 9 * k], np.uint8)


def _video_dataset(tmp_path: Path) -> Path:
    """Write a v3 dataset with PNG images, then turn its camera into a video feature with one mp4 holding
    both episodes back to back (episode 1 starts at from_timestamp = 0.4 s)."""
    av = pytest.importorskip("av")
    root = tmp_path / "ds"
    feats = make_features(["s"], ["a"], ["cam"], (Y, X))
    lengths = [4, 6]
    with LeRobotWriter(root, FPS, feats, "toy") as w:
        k = 0
        for n in lengths:
            imgs = np.stack([_colour(k + i) for i in range(n)])
            w.add_episode(
                {
                    "observation.state": np.zeros((n, 1)),
                    "action": np.zeros((n, 1)),
                    "observation.images.cam": imgs,
                },
                "t",
            )
            k += n
    key = "observation.images.cam"
    mp4 = root / "videos" / key / "chunk-000" / "file-000.mp4"
    mp4.parent.mkdir(parents=True)
    with av.open(str(mp4), "w") as c:
        s = c.add_stream("mpeg4", rate=FPS)
        s.width, s.height, s.pix_fmt = X, Y, "yuv420p"
        s.options = {"qscale": "2"}
        for k in range(sum(lengths)):
            for pkt in s.encode(av.VideoFrame.from_ndarray(_colour(k), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    info_p = root / "meta" / "info.json"
    info = json.loads(info_p.read_text())
    info["features"][key]["dtype"] = "video"
    info["video_path"] = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    info_p.write_text(json.dumps(info))
    ep_p = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    t = pq.read_table(ep_p)
    t = t.append_column(f"videos/{key}/chunk_index", pa.array([0, 0]))
    t = t.append_column(f"videos/{key}/file_index", pa.array([0, 0]))
    t = t.append_column(f"videos/{key}/from_timestamp", pa.array([0.0, 0.4]))
    t = t.append_column(f"videos/{key}/to_timestamp", pa.array([0.4, 1.0]))
    pq.write_table(t, ep_p)
    data_p = root / "data" / "chunk-000" / "file-000.parquet"
    d = pq.read_table(data_p)
    pq.write_table(d.drop_columns([key]), data_p)  # the frames now live only in the mp4
    return root


def test_video_frames_at_from_timestamp(tmp_path: Path) -> None:
    ds = open_dataset(_video_dataset(tmp_path))
    assert ds.cameras == ("cam",)
    for e, start in ((0, 0), (1, 4)):
        ep = ds.episode(e)
        frames = np.asarray(ep.images["cam"])  # (e, y, x, 3)
        for i in range(ep.length):
            want = _colour(start + i).astype(int)
            got = frames[i].astype(int)
            assert np.abs(got.mean((0, 1)) - want[0, 0]).max() < 8, (e, i)


def test_missing_video_file_is_named(tmp_path: Path) -> None:
    root = _video_dataset(tmp_path)
    (root / "videos" / "observation.images.cam" / "chunk-000" / "file-000.mp4").unlink()
    ds = open_dataset(root)
    with pytest.raises(DatasetError, match="file-000.mp4: video file is missing"):
        ds.episode(0).images["cam"][0]
