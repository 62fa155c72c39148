"""The statistics a LeRobotDataset states about itself (`--data.stats dataset`).

`meta/stats.json` is used when it has all four of mean, std, q01, q99 for every column; otherwise mean/std
are pooled from `meta/episodes_stats.jsonl` when present, and whatever is still missing (always the
quantiles of a v2.1 dataset) is computed exactly from the loaded data. Values are checked (count, finite)
because a wrong statistic silently mis-normalizes every batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from z1.data.errors import DatasetError
from z1.data.lerobot_files import read_json, read_jsonl
from z1.data.normalize import compute_full_stats, pool_mean_std
from z1.types import FeatureStats


def dataset_stats(
    root: Path, cols: tuple[str, ...], col_dims: Mapping[str, int], data: np.ndarray
) -> FeatureStats:
    """Statistics as the dataset states them (stats.json, else pooled episode stats), concatenated over
    `cols` (of `col_dims` dims each); what the files do not hold is computed from `data` (N, sum dims)."""
    path = root / "meta" / "stats.json"
    file_stats: dict[str, Any] = read_json(path) if path.is_file() else {}
    ep_stats_path = root / "meta" / "episodes_stats.jsonl"
    got: dict[str, np.ndarray] = {}
    for k in ("mean", "std", "q01", "q99"):
        vals = []
        for col in cols:
            fs = file_stats.get(col, {})
            if k not in fs:
                break
            try:
                v = np.asarray(fs[k], np.float32).reshape(-1)
            except (TypeError, ValueError) as e:
                raise DatasetError(f"{path}: field '{col}.{k}' is not a list of numbers ({e})") from e
            if v.shape != (col_dims[col],):
                raise DatasetError(f"{path}: field '{col}.{k}' has {v.size} values, expected {col_dims[col]}")
            if not np.isfinite(v).all():
                raise DatasetError(
                    f"{path}: field '{col}.{k}' has non-finite values at dims "
                    f"{np.flatnonzero(~np.isfinite(v)).tolist()[:8]}; fix the file or use "
                    "--data.stats exact (statistics computed from the data)"
                )
            vals.append(v)
        else:
            got[k] = np.concatenate(vals)
    if ("mean" not in got or "std" not in got) and ep_stats_path.is_file():
        rows = read_jsonl(ep_stats_path)
        means, stds = [], []
        for col in cols:
            try:
                per = [r["stats"][col] for r in rows]
                m, s = pool_mean_std(
                    [p["mean"] for p in per],
                    [p["std"] for p in per],
                    [int(np.ravel(p["count"])[0]) for p in per],
                )
            except (KeyError, TypeError, IndexError) as e:
                raise DatasetError(f"{ep_stats_path}: field 'stats.{col}' is incomplete ({e})") from e
            means.append(m)
            stds.append(s)
        got.setdefault("mean", np.concatenate(means).astype(np.float32))
        got.setdefault("std", np.concatenate(stds).astype(np.float32))
    if len(got) < 4:
        full = compute_full_stats(data)
        for k in ("mean", "std", "q01", "q99"):
            got.setdefault(k, np.asarray(getattr(full, k), np.float32))
    return FeatureStats(**got)
