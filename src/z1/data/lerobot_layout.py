"""Where a LeRobotDataset keeps things, by version: its task list, episode metadata, data files and videos.

    v3.0: data/chunk-CCC/file-FFF.parquet (many episodes per file), meta/episodes/*/*.parquet,
          meta/tasks.parquet, videos/<key>/chunk-CCC/file-FFF.mp4 (episodes at a `from_timestamp`)
    v2.1: data/chunk-CCC/episode_EEEEEE.parquet, meta/episodes.jsonl, meta/tasks.jsonl,
          videos/chunk-CCC/<key>/episode_EEEEEE.mp4

The paths come from info.json's `data_path` / `video_path` templates, so a dataset that moved its files
keeps working; the rest of the reader never looks at the version again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from z1.data.errors import DatasetError
from z1.data.lerobot_files import read_jsonl, read_parquet, require_field


@dataclass(frozen=True)
class Layout:
    """What the metadata says: task names by task_index, episode rows sorted by episode_index, and the data
    files in the order their rows are concatenated."""

    tasks: list[str]
    episodes: list[dict[str, Any]]
    files: list[Path]


def read_layout(root: Path, info: dict[str, Any], info_path: Path, version: str) -> Layout:
    """The layout of `version` (from info.json's `codebase_version`)."""
    if version.startswith("v3"):
        return _read_v3(root, info, info_path)
    if version in ("v2.0", "v2.1"):
        return _read_v2(root, info, info_path)
    raise DatasetError(f"{info_path}: field 'codebase_version' is {version!r}; supported: v3.0, v2.1, v2.0")


def _read_v3(root: Path, info: dict[str, Any], info_path: Path) -> Layout:
    meta = root / "meta"
    tpath = meta / "tasks.parquet"
    tt = read_parquet(tpath)
    name_col = next((c for c in ("task", "__index_level_0__") if c in tt.column_names), None)
    if name_col is None or "task_index" not in tt.column_names:
        raise DatasetError(
            f"{tpath}: needs columns 'task' (or the pandas index) and 'task_index'; has {tt.column_names}"
        )
    tasks = _task_list(tt.column(name_col).to_pylist(), tt.column("task_index").to_pylist(), tpath)
    ep_files = sorted((meta / "episodes").glob("chunk-*/file-*.parquet"))
    if not ep_files:
        raise DatasetError(f"{meta / 'episodes'}: no episode metadata files (chunk-<c>/file-<f>.parquet)")
    need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
    eps = pa.concat_tables([read_parquet(f) for f in ep_files], promote_options="default")
    for c in need:
        if c not in eps.column_names:
            raise DatasetError(f"{ep_files[0]}: missing column {c!r}")
    episodes = sorted(eps.to_pylist(), key=lambda r: r["episode_index"])
    data_path = str(require_field(info, "data_path", info_path, str))
    keys = sorted({(r["data/chunk_index"], r["data/file_index"]) for r in episodes})
    try:
        files = [root / data_path.format(chunk_index=c, file_index=f) for c, f in keys]
    except (KeyError, IndexError, ValueError) as e:
        raise DatasetError(
            f"{info_path}: field 'data_path' {data_path!r} is not a valid template: {e}"
        ) from e
    return Layout(tasks, episodes, files)


def _read_v2(root: Path, info: dict[str, Any], info_path: Path) -> Layout:
    meta = root / "meta"
    task_rows = read_jsonl(meta / "tasks.jsonl")
    try:
        tasks = _task_list(
            [t["task"] for t in task_rows], [t["task_index"] for t in task_rows], meta / "tasks.jsonl"
        )
    except KeyError as e:
        raise DatasetError(f"{meta / 'tasks.jsonl'}: field {e} is missing") from e
    episodes = sorted(read_jsonl(meta / "episodes.jsonl"), key=lambda r: r.get("episode_index", -1))
    for r in episodes:
        for k in ("episode_index", "length"):
            require_field(r, k, meta / "episodes.jsonl", int)
    data_path = str(require_field(info, "data_path", info_path, str))
    chunks = int(info.get("chunks_size", 1000))
    try:
        files = [
            root
            / data_path.format(episode_chunk=r["episode_index"] // chunks, episode_index=r["episode_index"])
            for r in episodes
        ]
    except (KeyError, IndexError, ValueError) as e:
        raise DatasetError(
            f"{info_path}: field 'data_path' {data_path!r} is not a valid template: {e}"
        ) from e
    return Layout(tasks, episodes, files)


def _task_list(names: list[Any], idx: list[Any], where: Path) -> list[str]:
    if sorted(idx) != list(range(len(idx))):
        raise DatasetError(f"{where}: field 'task_index' must be 0..{len(idx) - 1}, got {sorted(idx)}")
    out = [""] * len(idx)
    for n, i in zip(names, idx):
        out[int(i)] = str(n)
    return out


def video_location(
    root: Path, info: dict[str, Any], info_path: Path, version: str, episode: dict[str, Any], key: str
) -> tuple[Path, float]:
    """(mp4 file, time of the episode's first frame in it) of video feature `key` for one episode row."""
    vp = info.get("video_path")
    if not isinstance(vp, str):
        raise DatasetError(f"{info_path}: feature {key!r} is a video but field 'video_path' is {vp!r}")
    if version.startswith("v3"):
        try:
            c, f = episode[f"videos/{key}/chunk_index"], episode[f"videos/{key}/file_index"]
            t0 = float(episode.get(f"videos/{key}/from_timestamp", 0.0) or 0.0)
        except KeyError as e:
            raise DatasetError(f"{root / 'meta' / 'episodes'}: field {e} is missing") from e
        return root / vp.format(video_key=key, chunk_index=c, file_index=f), t0
    chunks = int(info.get("chunks_size", 1000))
    ep = int(episode["episode_index"])
    return root / vp.format(video_key=key, episode_chunk=ep // chunks, episode_index=ep), 0.0
