"""SFT benchmark: collect demonstrations, SFT the tiny policy, evaluate >= 50 episodes per task.

    MUJOCO_GL=egl .venv/bin/python bench/sft.py --tasks mw-quick --episodes 20 --steps 1500
    MUJOCO_GL=egl .venv/bin/python bench/sft.py --tasks mt10 --episodes 10 --steps 3000

Writes bench/results/sft_<tasks>.json and .md (wall time per stage, loss curve, per-task success with
95% intervals) and keeps the run (dataset, checkpoint) under runs/bench-sft-<tasks>/ for bench/rl.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="mw-quick", help="task set or comma-separated tasks")
    ap.add_argument("--episodes", type=int, default=20, help="demonstrations per task")
    ap.add_argument("--steps", type=int, default=1500, help="SFT optimizer steps")
    ap.add_argument("--batch", type=int, default=64, help="SFT batch size")
    ap.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    ap.add_argument("--eval-episodes", type=int, default=50, help="evaluation episodes per task")
    ap.add_argument("--h-exec", type=int, default=4, help="actions executed per chunk at evaluation")
    ap.add_argument("--max-steps", type=int, default=160, help="evaluation episode cap (env steps)")
    ap.add_argument("--num-steps", type=int, default=5, help="denoise steps K")
    ap.add_argument("--workers", type=int, default=2, help="env worker processes")
    ap.add_argument("--reuse-data", action="store_true", help="keep an existing dataset of a previous run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from rich.console import Console

    from z1.data.collect import collect
    from z1.demo import DemoBudget, DemoConfig, _eval_stage
    from z1.fsutil import write_json_atomic, write_text_atomic
    from z1.train.metrics import read_metrics
    from z1.train.setup import resolve_tasks
    from z1.train.sft import SFTConfig, run_sft

    torch.set_num_threads(2)
    console = Console()
    tasks = resolve_tasks(args.tasks)
    name = args.tasks.replace(",", "+")
    run = Path("runs") / f"bench-sft-{name}"
    run.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    data = run / "data"
    if not (args.reuse_data and data.exists()):
        if data.exists():
            shutil.rmtree(data)
        t0 = time.perf_counter()
        summary = collect(tasks, args.episodes, data, noise=0.1, seed=args.seed, workers=args.workers)
        timings["collect"] = time.perf_counter() - t0
        console.print(summary)
    if (run / "sft_metrics.jsonl").exists():
        (run / "sft_metrics.jsonl").unlink()
    t0 = time.perf_counter()
    sft = run_sft(
        SFTConfig(
            dataset=str(data),
            out=str(run),
            steps=args.steps,
            batch_size=args.batch,
            lr=args.lr,
            final_lr=args.lr / 10,
            threads=2,
            seed=args.seed,
            ckpt_every=args.steps,
            log_every=50,
        ),
        console,
    )
    timings["sft"] = time.perf_counter() - t0
    budget = DemoBudget(
        tasks=",".join(tasks),
        episodes_per_task=args.episodes,
        sft_steps=args.steps,
        sft_batch=args.batch,
        eval_episodes=args.eval_episodes,
        rl_iterations=0,
        groups_per_task=0,
        h_exec=args.h_exec,
        max_steps=args.max_steps,
        num_steps=args.num_steps,
    )
    t0 = time.perf_counter()
    result = _eval_stage(
        run / "sft_ckpt", tasks, budget, DemoConfig(workers=args.workers), run, "sft", console
    )
    timings["eval"] = time.perf_counter() - t0

    curve = [(m["step"], round(m["loss"], 4)) for m in read_metrics(run / "sft_metrics.jsonl")]
    sps = [m["samples_per_s"] for m in read_metrics(run / "sft_metrics.jsonl")]
    out = {
        "tasks": tasks,
        "episodes_per_task": args.episodes,
        "sft_steps": args.steps,
        "batch": args.batch,
        "eval_episodes_per_task": args.eval_episodes,
        "eval_max_steps": args.max_steps,
        "h_exec": args.h_exec,
        "num_steps": args.num_steps,
        "timings_s": timings,
        "total_min": sum(timings.values()) / 60,
        "sft_samples_per_s_median": sorted(sps)[len(sps) // 2] if sps else None,
        "final_loss": sft["final_loss"],
        "loss_curve": curve,
        "eval": result.to_json(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "checkpoint": str(run / "sft_ckpt"),
    }
    for t in out["eval"]["tasks"].values():
        t.pop("lengths", None)
        t.pop("success_flags", None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / f"sft_{name}.json", out)
    lines = [
        f"# SFT benchmark: {args.tasks}",
        "",
        f"{args.episodes} demos/task, {args.steps} steps x {args.batch}, "
        f"eval {args.eval_episodes} episodes/task "
        f"(cap {args.max_steps} steps, H_exec {args.h_exec}, K {args.num_steps}).",
        "",
        "| stage | wall time |",
        "|---|---|",
        *[f"| {k} | {v / 60:.1f} min |" for k, v in timings.items()],
        f"| total | {out['total_min']:.1f} min |",
        "",
        f"Median SFT rate: {out['sft_samples_per_s_median']:.0f} samples/s. Loss: "
        + " -> ".join(f"{s}:{v}" for s, v in curve[:: max(1, len(curve) // 8)]),
        "",
        "| task | success | 95% CI | mean length |",
        "|---|---|---|---|",
        *[
            f"| {t} | {100 * r['rate']:.0f}% | [{100 * r['ci_low']:.0f}, {100 * r['ci_high']:.0f}] "
            f"| {r['mean_length']:.0f} |"
            for t, r in out["eval"]["tasks"].items()
        ],
        f"| **average** | **{100 * out['eval']['average']:.1f}%** | | |",
    ]
    write_text_atomic(RESULTS / f"sft_{name}.md", "\n".join(lines) + "\n")
    console.print("\n".join(lines))
    console.print(json.dumps({"timings_s": timings}, indent=1))


if __name__ == "__main__":
    main()
