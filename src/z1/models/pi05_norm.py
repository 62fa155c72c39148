"""Normalization statistics of a pi0.5 source: openpi's norm_stats.json or LeRobot's normalizer files.

Statistics a source lacks are filled with neutral values (mean 0, std 1, q01 -1, q99 1) and listed in the
import record, and the mode falls back to mean/std when quantiles are missing, so an incomplete file still
imports and the summary says what was filled in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import safe_open

from z1.models.errors import CheckpointError
from z1.types import Conventions, FeatureStats, Normalization


def _stats_from_arrays(d: Mapping[str, np.ndarray], dim: int | None) -> tuple[FeatureStats, list[str]]:
    """-> (the first `dim` entries of each stat, the names of the stats filled with neutral values)."""
    n = dim
    if n is None:
        n = next(len(np.asarray(v).reshape(-1)) for v in d.values())
    filler = {"mean": 0.0, "std": 1.0, "q01": -1.0, "q99": 1.0}
    out, missing = {}, []
    for k, fill in filler.items():
        if k in d and d[k] is not None:
            v = np.asarray(d[k], dtype=np.float32).reshape(-1)
            if len(v) < n:
                raise CheckpointError(f"norm stat {k!r} has {len(v)} dims but {n} are needed")
            out[k] = v[:n]
        else:
            out[k] = np.full(n, fill, dtype=np.float32)
            missing.append(k)
    return FeatureStats(**out), missing


def openpi_norm(
    path: Path, state_dim: int | None, action_dim: int | None, conventions: Conventions
) -> tuple[Normalization, dict]:
    """Stats from an openpi norm_stats.json ('state' and 'actions', maybe under 'norm_stats')."""
    data = json.loads(path.read_text())
    stats = data.get("norm_stats", data)
    if "state" not in stats or "actions" not in stats:
        raise CheckpointError(f"{path}: expected norm_stats with 'state' and 'actions', got {sorted(stats)}")
    st, ms = _stats_from_arrays(stats["state"], state_dim)
    ac, ma = _stats_from_arrays(stats["actions"], action_dim)
    mode = "quantile" if not ({"q01", "q99"} & set(ms + ma)) else "meanstd"
    info = {"norm_source": str(path), "norm_missing": {"state": ms, "action": ma}}
    return Normalization(state=st, action=ac, mode=mode, conventions=conventions), info


def lerobot_norm(
    files: list[Path], mode: str, state_dim: int | None, action_dim: int | None, conventions: Conventions
) -> tuple[Normalization, dict]:
    """Stats from LeRobot normalizer files; the preprocessor's win (z1 keeps one set per feature)."""
    arrays: dict[str, np.ndarray] = {}
    post_actions: dict[str, np.ndarray] = {}
    for fp in sorted(files, key=lambda q: ("unnormalizer" in q.name, q.name)):  # preprocessor first
        with safe_open(str(fp), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118
                v = f.get_tensor(k).float().numpy()
                arrays.setdefault(k, v)
                if "unnormalizer" in fp.name and k.startswith("action."):
                    post_actions[k] = v

    def feature(prefix: str, dim: int | None) -> tuple[FeatureStats, list[str]]:
        d = {s: arrays.get(f"{prefix}.{s}") for s in ("mean", "std", "q01", "q99")}
        if all(v is None for v in d.values()):
            raise CheckpointError(
                f"LeRobot normalizer files {[f.name for f in files]} have no '{prefix}.*' stats"
            )
        return _stats_from_arrays({k: v for k, v in d.items() if v is not None}, dim)

    st, ms = feature("observation.state", state_dim)
    ac, ma = feature("action", action_dim)
    differ = sorted(k for k, v in post_actions.items() if k in arrays and not np.array_equal(arrays[k], v))
    info = {
        "norm_source": [str(f) for f in files],
        "norm_missing": {"state": ms, "action": ma},
        "postprocessor_stats_differ": differ,
    }
    return Normalization(state=st, action=ac, mode=mode, conventions=conventions), info
