"""What a run directory records about how it was made, and reading it back to replay the run.

Every `z1 sft` / `z1 rl` run (and so every demo) writes `<out>/<stage>_config.json`: the fully resolved
config (every field, after presets and flags), the z1 version and git commit (with a dirty flag), the
machine and the command line. `z1 sft|rl --config <out>/<stage>_config.json` (or `--config <out>`) takes
that config as the defaults of every field, so the same command on the same checkout and machine gives
the same run bit for bit on CPU; flags after it override field by field (a new `--out`, more steps).
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

from z1.config import ConfigError
from z1.fsutil import write_json_atomic

T = TypeVar("T")
FORMAT = 1


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip()


def source_revision() -> dict[str, Any]:
    """The git commit of the z1 source this process runs (None outside a git checkout) and whether the
    checkout has uncommitted changes to tracked files."""
    src = Path(__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], src)
    status = _git(["status", "--porcelain", "--untracked-files=no"], src) if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def provenance() -> dict[str, Any]:
    """z1 version, source revision, machine and command line of this process."""
    import torch

    from z1 import __version__

    return {
        "z1_version": __version__,
        **source_revision(),
        "machine": {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "argv": list(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def config_path(out: Path | str, stage: str) -> Path:
    return Path(out) / f"{stage}_config.json"


def write_run_config(out: Path | str, stage: str, cfg: Any, resumed: bool = False) -> Path:
    """Write `<out>/<stage>_config.json` (atomically): the resolved `cfg` and the provenance. A resumed run
    keeps the record of the run it continues (its command line and start), if there is one."""
    path = config_path(out, stage)
    if resumed and path.is_file():
        return path
    record = {"format": FORMAT, "stage": stage, "config": asdict(cfg), **provenance()}
    return write_json_atomic(path, record)


def read_run_config(path: Path | str, cls: type[T], stage: str) -> T:
    """The config a run recorded, as a `cls` instance: `path` is a `<stage>_config.json` or the run
    directory holding one. A missing file, another stage's file or a field of the wrong type is a
    ConfigError naming the file."""
    import json

    from z1.models.config_json import dataclass_from_json
    from z1.models.errors import CheckpointError

    p = Path(path)
    if p.is_dir():
        p = config_path(p, stage)
    if not p.is_file():
        raise ConfigError(
            f"--config {path}: {p} does not exist; pass the {stage}_config.json that a `z1 {stage}` run "
            "wrote into its --out directory (or that directory)"
        )
    try:
        record = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--config {p}: not readable JSON ({e})") from e
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ConfigError(f"--config {p}: has no 'config' object; it was not written by z1")
    if record.get("stage") != stage:
        raise ConfigError(
            f"--config {p}: records a `z1 {record.get('stage')}` run, not `z1 {stage}`; pass it to "
            f"`z1 {record.get('stage')} --config`"
        )
    try:
        cfg = dataclass_from_json(cls, record["config"], f"{p}: config")
    except CheckpointError as e:  # an unknown field or a value of the wrong type, named
        raise ConfigError(f"--config {e}") from e
    except (TypeError, ValueError) as e:  # the config's own checks (__post_init__)
        raise ConfigError(f"--config {p}: {e}") from e
    # What the recorded run did to its directory is not part of the run: a replay neither resumes nor
    # overwrites unless its own flags say so.
    return replace(cfg, resume=False, overwrite=False)
