"""`make bench`: run every benchmark of bench/ and write one markdown summary with the machine it ran on.

    .venv/bin/python bench/run_all.py [--quick]

Runs bench/policy.py, bench/envs.py, bench/sft.py, bench/rl.py, bench/ray_envs.py and
bench/ray_inference.py (the last two when Ray is installed) one after another (they are timed; running
them side by side would distort every number), then collects bench/results/*.json into
bench/results/SUMMARY.md. --quick shrinks the SFT/RL budgets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def machine() -> dict:
    info = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split()[1]
        info["memory_gib"] = round(int(mem) / 2**20, 1)
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def run(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    return {"cmd": " ".join(cmd), "exit": proc.returncode, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small SFT/RL budgets (about 25 minutes in all)")
    args = ap.parse_args()
    py = sys.executable
    steps = []
    steps.append(run([py, str(HERE / "policy.py")]))
    steps.append(run([py, str(HERE / "envs.py")]))
    if args.quick:
        steps.append(
            run([py, str(HERE / "sft.py"), "--episodes", "10", "--steps", "800", "--eval-episodes", "20"])
        )
        steps.append(
            run([py, str(HERE / "rl.py"), "--minutes", "5", "--seeds", "0", "--eval-episodes", "20"])
        )
    else:
        steps.append(run([py, str(HERE / "sft.py")]))
        steps.append(run([py, str(HERE / "rl.py"), "--minutes", "20", "--seeds", "0", "1", "--flat"]))
    try:
        import ray  # noqa: F401

        steps.append(run([py, str(HERE / "ray_envs.py")]))
        steps.append(run([py, str(HERE / "ray_inference.py")]))
    except ImportError:
        print(
            "ray is not installed: skipping bench/ray_envs.py, bench/ray_inference.py "
            "(pip install -e '.[ray]')"
        )

    lines = ["# z1 benchmark summary", "", "Machine:", ""]
    lines += [f"- {k}: {v}" for k, v in machine().items()]
    lines += ["", "| benchmark | exit | wall time |", "|---|---|---|"]
    lines += [f"| `{s['cmd'].split('/')[-1]}` | {s['exit']} | {s['seconds'] / 60:.1f} min |" for s in steps]
    for md in sorted(RESULTS.glob("*.md")):
        if md.name == "SUMMARY.md":
            continue
        lines += ["", f"## {md.stem}", "", md.read_text().strip()]
    for js in sorted(RESULTS.glob("*.json")):
        if not (RESULTS / f"{js.stem}.md").exists():
            lines += [
                "",
                f"## {js.stem}",
                "",
                "```json",
                json.dumps(json.loads(js.read_text()), indent=1)[:4000],
                "```",
            ]
    (RESULTS / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'SUMMARY.md'}")
    if any(s["exit"] != 0 for s in steps):
        sys.exit(1)


if __name__ == "__main__":
    main()
