"""Atomic file writes: write to a temporary name in the same directory, fsync, rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path | str, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path | str, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=_default) + "\n")


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# ------------------------------------------------------------------------------------ run directories
RUN_MARKERS = (
    "run.json",
    "timings.json",
    "sft_metrics.jsonl",
    "rl_metrics.jsonl",
    "rl_summary.json",
    "eval_final.json",
    "eval_sft.json",
    "eval_rl.json",
    "sft_ckpt",
    "rl_ckpt",
)
"""Entries that only z1 writes into a run directory (`z1 sft/rl/demo --out`): one of them marks a run."""

STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "sft": ("sft_ckpt", "sft_metrics.jsonl", "tb/sft"),
    "rl": ("rl_ckpt", "rl_metrics.jsonl", "rl_summary.json", "eval_final.json", "tb/rl"),
}
"""What each training stage writes into its run directory (a second run without --resume would overwrite
or append to these)."""


def is_run_dir(path: Path | str) -> bool:
    """True if `path` is a directory holding one of the files z1 writes into a run (`RUN_MARKERS`)."""
    p = Path(path)
    return p.is_dir() and any((p / m).exists() for m in RUN_MARKERS)


def _listing(p: Path, limit: int = 4) -> str:
    names = sorted(q.name for q in p.iterdir())
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_run_dir(out: Path | str, stage: str, *, resume: bool, overwrite: bool) -> list[str]:
    """Refuse (`RunDirError`) an --out whose files a `stage` run ("sft" | "rl") would overwrite or mix into.

    Accepted: a missing or empty directory; a run directory of z1 (`RUN_MARKERS`, e.g. a demo's or an SFT
    run's before `z1 rl`) without this stage's outputs; with `resume`, one with them (the caller
    continues it); with `overwrite`, anything. `overwrite` deletes this stage's metrics (so the new run's
    curves do not append to the old ones); the checkpoint is replaced atomically at the first save.
    Returns the names removed.
    """
    from z1.errors import RunDirError

    p = Path(out)
    if p.exists() and not p.is_dir():
        raise RunDirError(f"--out {p} is a file, not a directory; choose a directory for the run")
    if not p.is_dir() or not any(p.iterdir()):
        return []
    own = [name for name in STAGE_OUTPUTS[stage] if (p / name).exists()]
    if overwrite:
        removed = []
        for name in own:
            if name.endswith("_ckpt"):
                continue
            q = p / name
            if q.is_dir():
                shutil.rmtree(q)
            else:
                q.unlink()
            removed.append(name)
        return removed
    if own and not resume:
        raise RunDirError(
            f"--out {p} already holds a {stage} run ({', '.join(own)}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    if not own and not is_run_dir(p):
        raise RunDirError(
            f"--out {p} is not empty and is not a z1 run directory (it holds {_listing(p)}); choose a new "
            "or empty directory, or pass --overwrite to write the run into it anyway"
        )
    return []
