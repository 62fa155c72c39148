"""Atomic writes and run directories.

A file is written to a temporary name in the same directory, fsynced and renamed. A directory (a
checkpoint) is written into a hidden temporary sibling, every file and the directory fsynced, then renamed
into place; an existing directory is renamed aside first and deleted only after the new one is in, and what
a killed writer left behind is repaired by the next write (`recover_directory`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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


def write_json(path: Path, data: Any) -> None:
    """Plain JSON write (no temporary file: meant for files inside an `atomic_directory`); NaN and inf are
    refused, so every file z1 saves is strict JSON."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, allow_nan=False)
        fh.write("\n")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 8 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------ atomic directories
def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory (its entries survive a crash); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _tag_pid(name: str) -> int | None:
    """The writer's pid in a `.NAME.tmp-PID-HEX` / `.NAME.old-PID-HEX` sibling (None: an older format)."""
    tag = name.rsplit(".", 1)[-1].partition("-")[2]
    pid, sep, _ = tag.partition("-")
    return int(pid) if sep and pid.isdigit() else None


def _writer_alive(pid: int | None) -> bool:
    if pid is None or pid == os.getpid():
        return pid == os.getpid()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def recover_directory(path: str | Path) -> list[str]:
    """Repair what a killed `atomic_directory` left next to `path`; returns what was done (for logs).

    A crash between its two renames leaves only `.NAME.old-*` (the previous, complete directory): it is
    renamed back to `path`. Temporary `.NAME.tmp-*` copies and `.NAME.old-*` copies next to an intact
    `path` are deleted. Siblings of a writer that is still running are left alone."""
    dst = Path(path).expanduser().absolute()
    if not dst.parent.is_dir():
        return []
    done: list[str] = []
    olds = [
        p for p in dst.parent.glob(f".{dst.name}.old-*") if p.is_dir() and not _writer_alive(_tag_pid(p.name))
    ]
    if not dst.exists() and olds:
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        os.replace(newest, dst)
        fsync_dir(dst.parent)
        olds.remove(newest)
        done.append(f"restored {dst} from {newest.name} (a save was interrupted)")
    stale = olds + [
        p for p in dst.parent.glob(f".{dst.name}.tmp-*") if p.is_dir() and not _writer_alive(_tag_pid(p.name))
    ]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
        done.append(f"removed {p.name} (left by an interrupted save)")
    return done


def interrupted_save_hint(path: Path) -> str:
    """For a missing directory: a sentence naming the `.NAME.old-*` copies an interrupted
    `atomic_directory` left (the previous version, usable under its name), or "" if there are none."""
    leftovers = (
        sorted(p.name for p in path.parent.glob(f".{path.name}.old-*")) if path.parent.exists() else []
    )
    if not leftovers:
        return ""
    return (
        f" A previous version survives as {leftovers} (an interrupted save); "
        f"rename it to {path.name} to use it."
    )


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success fsync it and move it to `path` (replacing any old
    directory there); on failure delete it and leave `path` untouched. What an earlier killed write left
    behind is repaired first (`recover_directory`)."""
    dst = Path(path).expanduser().absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(dst)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = dst.parent / f".{dst.name}.tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
        for d, _, files in os.walk(tmp, topdown=False):
            for name in files:
                fsync_file(Path(d) / name)
            fsync_dir(Path(d))
        if dst.exists():
            old = dst.parent / f".{dst.name}.old-{tag}"
            os.replace(dst, old)
            try:
                os.replace(tmp, dst)
            except BaseException:
                os.replace(old, dst)  # put the previous checkpoint back
                raise
            fsync_dir(dst.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
            fsync_dir(dst.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
