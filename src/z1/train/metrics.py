"""Run metrics: one JSON line per logging step (`metrics.jsonl`) plus TensorBoard scalars.

JSONL is the source of truth (the report reads it); TensorBoard is a convenience and is skipped with a
one-line notice when the package is missing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    def __init__(self, run_dir: Path, name: str, tensorboard: bool = True) -> None:
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
        if self._tb is not None:
            for k, v in clean.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

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


def read_metrics(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
