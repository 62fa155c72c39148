"""z1's mp4 camera streams against LeRobot v3's documented video layout (no lerobot import): paths from the
v3 template, `features.<key>.info` as LeRobot reads it back from the file, per-episode from/to timestamps;
decoded frames close to the written ones (stated tolerance per codec), exactly in count and order, and the
same on every read; `z1 sft` trains on a video dataset; a missing or broken mp4 is named in the error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from z1.data.errors import DatasetError
from z1.data.lerobot import LeRobotWriter, make_features, open_dataset

av = pytest.importorskip("av")

FPS, Y, X = 10, 32, 48  # not square: a swapped height/width shows
LENGTHS = (6, 11, 4)
CAMS = ("scene", "wrist")
KEYS = tuple(f"observation.images.{c}" for c in CAMS)
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
# Worst per-episode mean / 99th-percentile absolute error (gray levels) on the smooth frames below, measured
# here: AV1 crf 30 1.7 / 6, x264 crf 23 1.9 / 7, MPEG-4 qscale 2 1.8 / 6; the bounds leave room for other
# encoder builds. A wrong frame (the neighbour's) is off by 11 gray levels everywhere plus the moved blob.
TOLERANCE = {"libsvtav1": (2.5, 10), "h264": (2.5, 10), "mpeg4": (2.5, 10)}


def _frame(k: int, cam: int, y: int = Y, x: int = X) -> np.ndarray:
    """Global frame k of camera `cam`: a smooth gradient whose brightness and a soft moving blob identify k
    (smooth, as rendered scenes mostly are, so the lossy error stays small)."""
    yy, xx = np.mgrid[0:y, 0:x].astype(np.float32)
    cy, cx = (5 + 3 * k) % y, (7 + 5 * k) % x
    blob = 90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0)
    base = np.stack([2 * xx, 3 * yy, np.full_like(xx, 40.0 + 60 * cam)], -1) + (11 * k) % 80
    return np.clip(base + blob[..., None], 0, 255).astype(np.uint8)


def _episodes(lengths=LENGTHS, y: int = Y, x: int = X) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out, k = [], 0
    for n in lengths:
        ep: dict[str, np.ndarray] = {
            "observation.state": rng.normal(size=(n, 4)).astype(np.float32),
            "action": rng.uniform(-1, 1, size=(n, 4)).astype(np.float32),
        }
        for c, key in enumerate(KEYS):
            ep[key] = np.stack([_frame(k + i, c, y, x) for i in range(n)])
        out.append(ep)
        k += n
    return out


def _write(root: Path, eps: list[dict[str, np.ndarray]], y: int = Y, x: int = X, **kw: Any) -> Path:
    feats = make_features(["x", "y", "z", "g"], ["dx", "dy", "dz", "dg"], CAMS, (y, x), video=True)
    with LeRobotWriter(root, FPS, feats, "toy", **kw) as w:
        for i, ep in enumerate(eps):
            w.add_episode(ep, f"task {i % 2}")
    return root


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[dict[str, np.ndarray]]]:
    eps = _episodes()
    return _write(tmp_path_factory.mktemp("video") / "ds", eps), eps


def test_layout_is_lerobot_v3(written) -> None:
    root, eps = written
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["video_path"] == V3_VIDEO_PATH
    want_files = {V3_VIDEO_PATH.format(video_key=k, chunk_index=0, file_index=0) for k in KEYS}
    assert {p.relative_to(root).as_posix() for p in (root / "videos").rglob("*") if p.is_file()} == want_files
    for key in KEYS:
        assert info["features"][key] == {
            "dtype": "video",
            "shape": [Y, X, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": Y,
                "video.width": X,
                "video.codec": "av1",
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": FPS,
                "video.channels": 3,
                "has_audio": False,
            },
        }
    # the frames live in the mp4 only: no camera column in the data files (LeRobot v3)
    assert pq.read_schema(root / "data" / "chunk-000" / "file-000.parquet").names == [
        "observation.state",
        "action",
        "timestamp",
        "frame_index",
        "episode_index",
        "index",
        "task_index",
    ]
    ep_meta = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    starts = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]]) / FPS
    for key in KEYS:
        col = {s: ep_meta.column(f"videos/{key}/{s}") for s in ("chunk_index", "file_index")}
        assert col["chunk_index"].to_pylist() == [0, 0, 0] and col["file_index"].to_pylist() == [0, 0, 0]
        frm = ep_meta.column(f"videos/{key}/from_timestamp")
        to = ep_meta.column(f"videos/{key}/to_timestamp")
        assert str(frm.type) == "double" and str(to.type) == "double"
        np.testing.assert_allclose(frm.to_numpy(), starts, atol=1e-12)
        np.testing.assert_allclose(to.to_numpy(), starts + np.asarray(LENGTHS) / FPS, atol=1e-12)
    # statistics describe the frames as written (before the lossy encoding), in LeRobot's image layout
    stats = json.loads((root / "meta" / "stats.json").read_text())
    for key in KEYS:
        frames = np.concatenate([ep[key] for ep in eps]).astype(np.float64) / 255
        got = np.asarray(stats[key]["mean"])
        assert got.shape == (3, 1, 1)
        np.testing.assert_allclose(got.reshape(3), frames.mean((0, 1, 2)), atol=1e-6)
        assert stats[key]["count"] == [sum(LENGTHS)]
    # the stream itself: one frame per row, at k / fps, in order
    with av.open(str(root / want_files.pop())) as c:
        times = [float(f.time) for f in c.decode(c.streams.video[0])]
    np.testing.assert_allclose(times, np.arange(sum(LENGTHS)) / FPS, atol=1e-6)


@pytest.mark.parametrize("codec", list(TOLERANCE))
def test_decoded_frames_match_written(tmp_path: Path, codec: str) -> None:
    if codec not in av.codecs_available and codec != "h264":
        pytest.skip(f"PyAV here cannot encode {codec}")
    eps = _episodes()
    root = _write(tmp_path / "ds", eps, video_codec=codec)
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["features"][KEYS[0]]["info"]["video.codec"] == {"libsvtav1": "av1"}.get(codec, codec)
    ds = open_dataset(root)
    assert ds.cameras == CAMS and ds.num_frames == sum(LENGTHS)
    mean_tol, p99_tol = TOLERANCE[codec]
    for c, cam in enumerate(CAMS):
        written_all = np.concatenate([ep[KEYS[c]] for ep in eps]).astype(np.int16)  # (N, y, x, 3)
        for e, ep in enumerate(eps):
            got = np.asarray(ds.episode(e).images[cam])
            assert got.shape == ep[KEYS[c]].shape and got.dtype == np.uint8
            err = np.abs(got.astype(np.int16) - ep[KEYS[c]])
            assert err.mean() < mean_tol and np.percentile(err, 99) <= p99_tol, (codec, cam, e)
            # order and count are exact: every decoded frame is nearest to the frame written at its row
            d = ((got[:, None].astype(np.int16) - written_all[None]) ** 2).mean((2, 3, 4))  # (e, N)
            assert d.argmin(1).tolist() == list(range(sum(LENGTHS[:e]), sum(LENGTHS[: e + 1])))


def test_reading_is_deterministic(written) -> None:
    root, _ = written
    ds = open_dataset(root)
    full = {cam: np.concatenate([np.asarray(ds.episode(e).images[cam]) for e in range(3)]) for cam in CAMS}
    rng = np.random.default_rng(1)
    for _ in range(3):  # batches in any order, across episodes, with repeats, from a fresh reader too
        rows = rng.integers(0, ds.num_frames, size=7)
        for reader in (ds, open_dataset(root)):
            for cam in CAMS:
                np.testing.assert_array_equal(reader.frame_images(cam, rows), full[cam][rows])


def test_a_new_file_starts_past_the_size_limit(tmp_path: Path) -> None:
    lengths = (40,) * 5
    eps = _episodes(lengths)
    root = _write(tmp_path / "ds", eps, video_files_size_in_mb=1e-5)  # ~10 bytes: roll over when possible
    ep_meta = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    key = KEYS[0]
    files = [r[f"videos/{key}/file_index"] for r in ep_meta]
    assert files == sorted(files) and files[-1] >= 1, files  # several files, in order
    frames_in_file: dict[int, int] = {}
    for r, n in zip(ep_meta, lengths):
        f = r[f"videos/{key}/file_index"]
        assert r[f"videos/{key}/from_timestamp"] == pytest.approx(frames_in_file.get(f, 0) / FPS)
        assert r[f"videos/{key}/to_timestamp"] == pytest.approx((frames_in_file.get(f, 0) + n) / FPS)
        frames_in_file[f] = frames_in_file.get(f, 0) + n
    for f, n in frames_in_file.items():
        mp4 = root / V3_VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=f)
        with av.open(str(mp4)) as c:
            assert sum(1 for _ in c.decode(c.streams.video[0])) == n
    ds = open_dataset(root)
    for e, ep in enumerate(eps):
        got = np.asarray(ds.episode(e).images[CAMS[0]])
        assert np.abs(got.astype(np.int16) - ep[key]).mean() < TOLERANCE["libsvtav1"][0]


def _mp4(root: Path, key: str = KEYS[0]) -> Path:
    return root / V3_VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)


def test_missing_or_broken_video_names_the_file(tmp_path: Path) -> None:
    root = _write(tmp_path / "ds", _episodes())
    short = _write(tmp_path / "short", _episodes((6, 2)))  # an mp4 of 8 frames where 21 are expected
    mp4 = _mp4(root)
    original = mp4.read_bytes()
    mp4.unlink()
    with pytest.raises(DatasetError, match=f"{mp4}: video file is missing"):
        open_dataset(root).episode(0).images[CAMS[0]][0]
    mp4.write_bytes(b"this is not an mp4 file" * 10)
    with pytest.raises(DatasetError, match=f"{mp4}: cannot decode video"):
        open_dataset(root).episode(0).images[CAMS[0]][0]
    mp4.write_bytes(original[: len(original) // 3])  # truncated: the index (at the end) is gone
    with pytest.raises(DatasetError, match=f"{mp4}: cannot decode video"):
        open_dataset(root).episode(1).images[CAMS[0]][:]
    mp4.write_bytes(_mp4(short).read_bytes())
    ds = open_dataset(root)
    np.asarray(ds.episode(0).images[CAMS[0]])  # the first 6 frames are there
    with pytest.raises(
        DatasetError, match=rf"{mp4}: the video ends at t=0\.700s \(frame 7\), before frame 16 "
    ):
        ds.episode(1).images[CAMS[0]][10]
    other = _write(tmp_path / "big", _episodes(y=64, x=64), y=64, x=64)  # same frames count, other size
    mp4.write_bytes(_mp4(other).read_bytes())
    with pytest.raises(
        DatasetError, match=rf"{mp4}: frames are \[64, 64, 3\] but .*'features.{KEYS[0]}.shape'"
    ):
        open_dataset(root).episode(0).images[CAMS[0]][0]


def test_writer_refuses_what_it_cannot_encode(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="needs an even height and width"):
        _write(tmp_path / "odd", _episodes((3,), y=15, x=20), y=15, x=20)
    with pytest.raises(DatasetError, match=r"video_codec 'vp9' is not supported; use one of \['libsvtav1'"):
        _write(tmp_path / "vp9", _episodes((3,)), video_codec="vp9")
    assert not list(tmp_path.iterdir())  # nothing left behind, not even a temporary directory


def test_sft_cli_trains_on_a_video_dataset(tmp_path: Path, capsys) -> None:
    from z1.cli import main

    root = _write(tmp_path / "ds", _episodes((14, 14, 14), y=64, x=64), y=64, x=64)
    out = tmp_path / "run"
    argv = ["sft", "--dataset", str(root), "--out", str(out), "--policy", "tiny"]
    main([*argv, "--steps", "2", "--batch-size", "4", "--threads", "1", "--warmup", "1", "--log-every", "1"])
    assert (out / "sft_ckpt" / "model.safetensors").is_file()
    assert "'final_loss'" in capsys.readouterr().out


def test_collect_video_writes_mp4(tmp_path: Path, monkeypatch) -> None:
    """`z1 collect --video` reaches collect(); collect(video=True) writes the cameras as mp4."""
    import dataclasses

    import z1.data.collect as collect_mod
    from test_data_collect import FakeEnv
    from z1.cli import main
    from z1.types import Observation

    seen: dict[str, Any] = {}
    monkeypatch.setattr(collect_mod, "collect", lambda *a, **kw: seen.update(kw) or "done")
    main(["collect", "--out", str(tmp_path / "x"), "--tasks", "a,b", "--video"])
    assert seen["video"] is True
    monkeypatch.undo()

    class Env16(FakeEnv):
        spec = dataclasses.replace(FakeEnv.spec, image_size=(16, 16))

        def observe(self) -> Observation:
            img = np.full((16, 16, 3), min(8 * self.t, 255), np.uint8)
            return Observation({"cam": img}, self.p.astype(np.float32), "")

    out = tmp_path / "demos"
    collect_mod.collect(["a"], 2, out, workers=0, progress=False, env_factory=Env16, video=True)
    ds = open_dataset(out)
    assert ds.file_features["observation.images.cam"]["dtype"] == "video"
    assert json.loads((out / "meta" / "z1_collect.json").read_text())["cameras"] == "mp4 (libsvtav1)"
    ep = ds.episode(0)
    got = np.asarray(ep.images["cam"]).astype(np.int16)  # frame t is a flat 8 * t
    assert np.abs(got.mean((1, 2, 3)) - np.minimum(8 * np.arange(ep.length), 255)).max() < 3
