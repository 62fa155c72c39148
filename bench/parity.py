"""Refactor parity: a short `z1 sft` and a 2-iteration `z1 rl` through the CLI, digested to one JSON.

    MUJOCO_GL=egl .venv/bin/python bench/parity.py --out runs/parity-after
    PYTHONPATH=/tmp/before/src .venv/bin/python bench/parity.py --out runs/parity-before   # another checkout
    .venv/bin/python bench/parity.py --compare runs/parity-before runs/parity-after

The digest holds a SHA-256 of every tensor of both checkpoints and every metrics value that does not
measure time, so two checkouts that compute the same thing give the same digest (CPU, fixed seeds).
`--compare` lists what differs and exits 1 if anything does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TASKS = "button-press-topdown-v3,drawer-open-v3"
# Keys that measure wall time or machine load, not the computation.
_TIMING_WORDS = ("time", "_s", "per_s", "sec", "minutes", "wall", "elapsed", "eta")


def _z1(*args: str) -> None:
    cmd = [sys.executable, "-m", "z1.cli", *args]
    print("+ z1", " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def _is_timing(key: str) -> bool:
    return any(w in key for w in _TIMING_WORDS)


def _tensor_digest(ckpt: Path) -> dict[str, str]:
    from safetensors.numpy import load_file

    out: dict[str, str] = {}
    for f in sorted(ckpt.rglob("*.safetensors")):
        for name, arr in sorted(load_file(str(f)).items()):
            out[f"{f.relative_to(ckpt)}:{name}"] = hashlib.sha256(arr.tobytes()).hexdigest()[:16]
    return out


def _metrics_digest(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows.append({k: v for k, v in sorted(row.items()) if not _is_timing(k)})
    return rows


def run(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    data, sft, rl = out / "data", out / "sft", out / "rl"
    if not data.exists():
        _z1("collect", "--out", str(data), "--tasks", TASKS, "--episodes", "6", "--workers", "0")
    _z1(
        "sft", "--dataset", str(data), "--out", str(sft), "--policy", "tiny", "--steps", "400",
        "--batch-size", "16", "--overwrite",
    )  # fmt: skip
    _z1(
        "rl", "--preset", "mw-quick", "--init", str(sft / "sft_ckpt"), "--out", str(rl), "--tasks", TASKS,
        "--iterations", "2", "--groups-per-task", "1", "--num-slots", "8", "--workers", "0",
        "--eval-episodes", "0", "--eval-every", "0", "--calibration-episodes", "2",
        "--rollout.max-steps", "120", "--overwrite",
    )  # fmt: skip
    digest = {
        "sft_ckpt": _tensor_digest(sft / "sft_ckpt"),
        "rl_ckpt": _tensor_digest(rl / "rl_ckpt"),
        "sft_metrics": _metrics_digest(next(sft.glob("*metrics*.jsonl"))),
        "rl_metrics": _metrics_digest(rl / "rl_metrics.jsonl"),
    }
    (out / "parity.json").write_text(json.dumps(digest, indent=1))
    print(f"wrote {out / 'parity.json'}: {len(digest['sft_ckpt'])} + {len(digest['rl_ckpt'])} tensors")
    return digest


def compare(a: Path, b: Path) -> int:
    da = json.loads((a / "parity.json").read_text())
    db = json.loads((b / "parity.json").read_text())
    bad = 0
    for part in da:
        if da[part] != db.get(part):
            bad += 1
            if isinstance(da[part], dict):
                keys = sorted(set(da[part]) | set(db.get(part, {})))
                diff = [k for k in keys if da[part].get(k) != db.get(part, {}).get(k)]
                print(f"{part}: {len(diff)} of {len(keys)} differ, e.g. {diff[:5]}")
            else:
                print(f"{part}: differs")
    print("identical" if not bad else f"{bad} part(s) differ")
    return 1 if bad else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="run directory for this checkout's digest")
    p.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"), help="compare two digests")
    args = p.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    if not args.out:
        p.error("give --out DIR (or --compare BEFORE AFTER)")
    run(args.out)


if __name__ == "__main__":
    main()
