"""How a LeRobot dataset's features map onto the policy's inputs: camera names, state and action keys, and
where the normalization statistics come from.

Datasets recorded elsewhere name things their own way (`observation.images.front`, `observation.joints`);
the policy has fixed camera slots (`scene`, `wrist` for the tiny/small presets, `base_0_rgb`, ... for pi05)
and reads `observation.state` / `action`. `DataConfig` is applied once, where the dataset is opened
(`open_dataset(root, data)`), so everything downstream sees the policy's names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from z1.data.errors import DatasetError

IMAGE_PREFIX = "observation.images."


def _split_keys(value: str, flag: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in value.split(","))
    if not keys or any(not k for k in keys):
        raise DatasetError(f"{flag} {value!r}: expected a feature key or comma-separated keys")
    if len(set(keys)) != len(keys):
        raise DatasetError(f"{flag} {value!r}: a key is listed twice")
    return keys


@dataclass(frozen=True)
class DataConfig:
    """Map a dataset's cameras and state/action keys onto the policy's, and choose the statistics."""

    cameras: str = ""
    """Dataset camera -> policy camera slot: comma-separated `dataset:slot` pairs, e.g.
    `front:scene,wrist:wrist`. A dataset camera is named without the `observation.images.` prefix (the
    full feature key works too). Cameras not listed keep their names. Empty: the dataset's names as they
    are."""
    state_key: str = "observation.state"
    """Dataset feature used as the state; several keys joined by commas are concatenated in that order."""
    action_key: str = "action"
    """Dataset feature used as the action; several keys joined by commas are concatenated in that order."""
    stats: Literal["exact", "dataset"] = "exact"
    """Normalization statistics: exact (computed from the dataset's state/action columns) or dataset (trust
    its meta/stats.json; LeRobot v3 writes quantiles there as averages of per-episode quantiles, which can be
    far from the dataset's own)."""

    def __post_init__(self) -> None:
        self.camera_map()  # validate early: a bad flag fails before the dataset is read
        self.state_keys()
        self.action_keys()
        if self.stats not in ("exact", "dataset"):
            raise DatasetError(f"--data.stats must be 'exact' or 'dataset', got {self.stats!r}")

    def camera_map(self) -> dict[str, str]:
        """{dataset camera (prefix stripped): policy slot}, in the order given."""
        out: dict[str, str] = {}
        if not self.cameras.strip():
            return out
        for pair in self.cameras.split(","):
            src, sep, dst = (p.strip() for p in pair.partition(":"))
            if not sep or not src or not dst:
                raise DatasetError(
                    f"--data.cameras {self.cameras!r}: {pair.strip()!r} is not a `dataset:slot` pair "
                    "(example: front:scene,wrist:wrist)"
                )
            src, dst = src.removeprefix(IMAGE_PREFIX), dst.removeprefix(IMAGE_PREFIX)
            if src in out:
                raise DatasetError(f"--data.cameras {self.cameras!r}: camera {src!r} is mapped twice")
            if dst in out.values():
                raise DatasetError(
                    f"--data.cameras {self.cameras!r}: slot {dst!r} is the target of two cameras"
                )
            out[src] = dst
        return out

    def state_keys(self) -> tuple[str, ...]:
        return _split_keys(self.state_key, "--data.state-key")

    def action_keys(self) -> tuple[str, ...]:
        return _split_keys(self.action_key, "--data.action-key")

    @property
    def is_identity(self) -> bool:
        """True when nothing is renamed (the dataset already uses the policy's names)."""
        return (
            all(k == v for k, v in self.camera_map().items())
            and self.state_keys() == ("observation.state",)
            and self.action_keys() == ("action",)
        )
