"""Run metrics: one JSON line per logging step (`metrics.jsonl`) plus TensorBoard scalars and hparams,
optionally mirrored to Weights & Biases.

JSONL is the source of truth (the report reads it); TensorBoard and W&B are conveniences.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested config dict -> {"rollout/group_size": 8, ...} with scalar values (others as text), the form
    TensorBoard's hparams and W&B's config tables take."""
    flat: dict[str, bool | int | float | str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, f"{key}/"))
        elif isinstance(v, (bool, int, float, str)):
            flat[key] = v
        else:
            flat[key] = str(v)
    return flat


def _start_wandb(mode: str, run_dir: Path, name: str, config: dict[str, Any] | None):
    try:
        import wandb
    except ImportError:
        from z1.errors import Z1Error

        raise Z1Error(
            f"--wandb {mode} needs the wandb package: pip install -e '.[wandb]' (or --wandb off)"
        ) from None
    return wandb.init(
        project="z1",
        name=f"{run_dir.name}-{name}",
        dir=str(run_dir),
        mode=mode,
        config=flatten(config or {}),
        reinit="create_new",
    )


class MetricsLogger:
    def __init__(
        self,
        run_dir: Path,
        name: str,
        tensorboard: bool = True,
        wandb: str = "off",
        config: dict[str, Any] | None = None,
    ) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{name}_metrics.jsonl"
        self._fh = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.dir / "tb" / name))
            except ImportError:  # pragma: no cover - tensorboard is a core dependency
                self._tb = None
        self._wandb = _start_wandb(wandb, self.dir, name, config) if wandb != "off" else None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        clean: dict[str, Any] = {"step": step, "time": time.time()}
        for k, v in metrics.items():
            if hasattr(v, "item"):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            clean[k] = v
        self._fh.write(json.dumps(clean) + "\n")
        self._fh.flush()
        scalars = {
            k: v
            for k, v in clean.items()
            if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def hparams(self, config: dict[str, Any], final: dict[str, Any]) -> None:
        """The run's settings beside its final numbers (TensorBoard's HPARAMS tab; W&B summary)."""
        metrics = {
            f"final/{k}": float(v)
            for k, v in final.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        if self._tb is not None:
            self._tb.add_hparams(flatten(config), metrics, run_name=".")
        if self._wandb is not None:
            self._wandb.summary.update(metrics)

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the checkpoint's step, so curves have no duplicates."""
        self._fh.close()
        lines = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        self.path.write_text("".join(ln + "\n" for ln in lines))
        self._fh = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
