"""GRPO benchmark from the mw-quick SFT checkpoint (run bench/sft.py first).

    MUJOCO_GL=egl .venv/bin/python bench/rl.py --minutes 20 --seeds 0 1 --flat

For each seed: tree-mode GRPO for a wall-clock budget, then an ODE evaluation with --eval-episodes per
task, compared with the SFT evaluation of bench/sft.py on the same seeds. With --flat, flat GRPO runs for
the same number of iterations as seed 0's tree run (same leaves per group), so env steps and success can
be compared. Every run logs the fraction of groups that carry signal under the active calibration (D4)
and under binary rewards (D0).
Writes bench/results/rl.json and rl.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sft-run",
        default="runs/bench-sft-mw-quick/conv16-lr",
        help="a bench/sft.py variant directory (conv16-lr = the laptop preset and its SFT recipe)",
    )
    ap.add_argument("--minutes", type=float, default=20.0, help="GRPO wall-clock budget per tree run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--flat", action="store_true", help="also run flat GRPO (seed 0) for comparison")
    ap.add_argument(
        "--flat-iterations",
        type=int,
        default=None,
        help="run only flat GRPO for this many iterations (the count of an earlier tree run), e.g. beside it",
    )
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--lr", type=float, default=None, help="override the preset's learning rate")
    ap.add_argument("--reward", default="D4", choices=["D0", "D1", "D4"])
    ap.add_argument("--groups-per-task", type=int, default=None, help="override the preset's groups per task")
    ap.add_argument("--noise-level", type=float, default=None, help="override the Flow-SDE noise level a")
    ap.add_argument(
        "--stochastic", default=None, choices=["single", "window", "all"], help="override the SDE step set"
    )
    ap.add_argument(
        "--task-sampling",
        default=None,
        choices=["uniform", "uncertain"],
        help="override how groups are spread over tasks (uncertain: sqrt(p (1 - p)) + eps of train success)",
    )
    ap.add_argument("--iterations", type=int, default=None, help="stop tree runs after N iterations")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue tree runs from their checkpoints (up to --iterations)",
    )
    ap.add_argument("--tag", default="", help="suffix of the run names (runs/bench-rl-tree-s0<tag>)")
    ap.add_argument(
        "--report-only",
        nargs="+",
        default=None,
        metavar="RUN",
        help="rebuild rl.json/rl.md from finished runs (e.g. tree-s0 flat) without training",
    )
    args = ap.parse_args()

    import torch
    from rich.console import Console

    from z1.fsutil import write_json_atomic, write_text_atomic
    from z1.presets import rl_preset
    from z1.rl.reward import RewardConfig
    from z1.train.metrics import read_metrics
    from z1.train.rl import run_rl

    torch.set_num_threads(1)
    console = Console()
    sft_run = Path(args.sft_run)
    # The SFT baseline: the variant's checkpoint evaluated by the current evaluator (per-episode flags in
    # seed order) with run_rl's final-evaluation settings (same seeds, cap, H_exec, K), so every delta is
    # paired by seed; computed once per SFT run and kept next to it.
    seeded = sft_run / "eval_seeded.json"
    if not seeded.exists():
        sft_eval = _evaluate_sft(sft_run / "sft_ckpt", rl_preset("mw-quick"), args.eval_episodes, console)
        write_json_atomic(seeded, sft_eval)
    sft_eval = json.loads(seeded.read_text())
    base = rl_preset("mw-quick")
    base = replace(
        base,
        init=str(sft_run / "sft_ckpt"),
        eval_every=0,
        eval_episodes=args.eval_episodes,
        iterations=10_000,
        reward=RewardConfig(kind=args.reward),
    )
    if args.lr is not None:
        base = replace(base, lr=args.lr)
    if args.groups_per_task is not None:
        base = replace(base, groups_per_task=args.groups_per_task)
    if args.noise_level is not None:
        base = replace(base, rollout=replace(base.rollout, noise_level=args.noise_level))
    if args.stochastic is not None:
        base = replace(base, rollout=replace(base.rollout, stochastic=args.stochastic))
    if args.task_sampling is not None:
        base = replace(base, task_sampling=replace(base.task_sampling, mode=args.task_sampling))

    runs: dict[str, dict] = {}

    def one(name: str, cfg, train: bool = True) -> dict:
        out = Path("runs") / f"bench-rl-{name}"
        if train:
            if not cfg.resume and (out / "rl_metrics.jsonl").exists():
                (out / "rl_metrics.jsonl").unlink()
            t0 = time.perf_counter()
            summary = run_rl(replace(cfg, out=str(out)), console)
            wall = time.perf_counter() - t0
        else:
            if (out / "rl_config.json").exists():  # the run's own settings (flat runs are not `base`)
                from z1.train.rl import RLConfig
                from z1.train.runinfo import read_run_config

                cfg = read_run_config(out, RLConfig, "rl")
            summary = json.loads((out / "rl_summary.json").read_text())
            times = [m["time"] for m in read_metrics(out / "rl_metrics.jsonl")]
            wall = times[-1] - times[0]
        metrics = [m for m in read_metrics(out / "rl_metrics.jsonl") if "train_success_avg" in m]
        res = {
            "settings": {
                "mode": cfg.rollout.mode,
                "seed": cfg.seed,
                "lr": cfg.lr,
                "groups_per_task": cfg.groups_per_task,
                "noise_level": cfg.rollout.noise_level,
                "stochastic": cfg.rollout.stochastic,
                "reward": cfg.reward.kind,
                "kl_beta": cfg.grpo.kl_beta,
                "task_sampling": cfg.task_sampling.mode,
            },
            "iterations": summary["iterations"],
            "sft_eval_average": sft_eval[
                "average"
            ],  # this run's own baseline (the checkpoint it started from)
            "sft_eval_tasks": {t: r["rate"] for t, r in sft_eval["tasks"].items()},
            "wall_min": wall / 60,
            "train_min": sum(m.get("time/rollout", 0) + m.get("time/update", 0) for m in metrics) / 60,
            "env_steps": summary["env_steps"],
            "env_steps_flat_equiv": summary["env_steps_flat_equiv"],
            "eval_average": summary["eval"]["average"],
            "eval_tasks": {t: r["rate"] for t, r in summary["eval"]["tasks"].items()},
            "eval_ci": {t: (r["ci_low"], r["ci_high"]) for t, r in summary["eval"]["tasks"].items()},
            "delta": _paired(sft_eval["tasks"], summary["eval"]["tasks"]),
            "train_success_curve": [
                (m["step"], m["env_steps"], round(m["train_success_avg"], 3)) for m in metrics
            ],
            "signal_frac": sum(m.get("groups/signal_frac", 0) for m in metrics) / max(1, len(metrics)),
            "signal_frac_D0": sum(m.get("groups/signal_frac_D0", 0) for m in metrics) / max(1, len(metrics)),
            "time_rollout_s": sum(m.get("time/rollout", 0) for m in metrics),
            "time_update_s": sum(m.get("time/update", 0) for m in metrics),
        }
        runs[name] = res
        console.print(
            name, json.dumps({k: v for k, v in res.items() if k != "train_success_curve"}, indent=1)
        )
        return res

    if args.report_only:
        for name in args.report_only:
            one(name, base, train=False)
    for seed in [] if args.report_only or args.flat_iterations else args.seeds:
        iters = {"iterations": args.iterations} if args.iterations else {}
        cfg = replace(base, seed=seed, max_minutes=args.minutes, resume=args.resume, **iters)
        one(f"tree-s{seed}{args.tag}", cfg)
    if (args.flat or args.flat_iterations) and not args.report_only:
        iters = args.flat_iterations or runs[f"tree-s{args.seeds[0]}{args.tag}"]["iterations"]
        flat_cfg = replace(
            base,
            seed=args.seeds[0],
            iterations=iters,
            max_minutes=None,
            rollout=replace(base.rollout, mode="flat"),
        )
        one(f"flat{args.tag}", flat_cfg)

    # Runs accumulate across invocations (a sweep is several commands, maybe side by side): merge with
    # what is on disk now; each row names its settings.
    # Rows from before per-run baselines started from the SFT checkpoint of the file's top-level baseline.
    if (RESULTS / "rl.json").exists():
        old = json.loads((RESULTS / "rl.json").read_text())
        earlier = {k: v for k, v in old["runs"].items() if "settings" in v}
        for v in earlier.values():
            v.setdefault("sft_eval_average", old["sft_eval_average"])
            v.setdefault("sft_eval_tasks", old["sft_eval_tasks"])
        runs = {**earlier, **runs}
    sft_avg = sft_eval["average"]
    out = {
        "sft_eval_average": sft_avg,
        "sft_eval_tasks": {t: r["rate"] for t, r in sft_eval["tasks"].items()},
        "minutes_per_tree_run": args.minutes,
        "reward": args.reward,
        "runs": runs,
        "delta_points": {k: 100 * (v["eval_average"] - v["sft_eval_average"]) for k, v in runs.items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "rl.json", out)

    def ci(d) -> str:
        return f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]" if d else "-"

    lines = [
        "# GRPO benchmark (mw-quick, 2 CPU cores)",
        "",
        f"Current SFT checkpoint: {100 * sft_avg:.1f}% ({args.eval_episodes} episodes/task, ODE). Each run is"
        " compared with the SFT checkpoint it started from (column SFT); delta = eval - SFT paired by eval"
        " seed (the same 50 seeds per task), with its 95% interval (rows without one predate paired"
        " evaluation).",
        "",
        "| run | settings | iterations | training time | env steps | flat-equivalent | SFT | eval success "
        "| delta vs SFT [95% CI] | signal groups (D4 / D0) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, v in runs.items():
        paired = v.get("delta", {}).get("average")
        lines.append(
            f"| {k} | {_settings(v['settings'])} | {v['iterations']} "
            f"| {v.get('train_min', v['wall_min']):.1f} min "
            f"| {int(v['env_steps'])} "
            f"| {int(v['env_steps_flat_equiv'])} | {100 * v['sft_eval_average']:.1f}% "
            f"| {100 * v['eval_average']:.1f}% "
            f"| {ci(paired) if paired else '{:+.1f}'.format(out['delta_points'][k])} "
            f"| {v['signal_frac']:.2f} / {v['signal_frac_D0']:.2f} |"
        )
    current = {k: v for k, v in runs.items() if "delta" in v}
    tasks = list(out["sft_eval_tasks"])
    lines += [
        "",
        "Per task, runs from the current SFT checkpoint: success, and delta [95% CI] paired by seed.",
        "",
        "| task | SFT | " + " | ".join(current) + " |",
        "|---|---|" + "---|" * len(current),
    ]
    for t in tasks:
        lines.append(
            f"| {t} | {100 * out['sft_eval_tasks'][t]:.0f}% | "
            + " | ".join(
                f"{100 * v['eval_tasks'].get(t, 0):.0f}% ({ci(v['delta'].get(t))})" for v in current.values()
            )
            + " |"
        )
    write_text_atomic(RESULTS / "rl.md", "\n".join(lines) + "\n")
    console.print("\n".join(lines))


def _evaluate_sft(ckpt: Path, preset, episodes: int, console) -> dict:
    from z1.evaluate import EvalConfig, evaluate
    from z1.models.checkpoint import load_checkpoint
    from z1.train.setup import build_runner, make_vector_env, resolve_tasks, suite_for

    tasks = resolve_tasks(preset.tasks)
    loaded = load_checkpoint(ckpt)
    venv = make_vector_env(suite_for(preset.tasks), 8, 2, loaded.model.config.vision.image_size)
    try:
        runner = build_runner(loaded.model, loaded.norm, venv.spec, preset.rollout.h_exec)
        ro = preset.rollout
        cfg = EvalConfig(episodes_per_task=episodes, num_steps=ro.num_steps, max_steps=ro.max_steps)
        console.print(f"evaluating the SFT checkpoint {ckpt} ({episodes} episodes per task)")
        return evaluate(runner, venv, tasks, cfg).to_json()
    finally:
        venv.close()


def _paired(before: dict, after: dict) -> dict:
    """Paired (same eval seeds) delta after - before with its 95% interval, per task and on the average."""
    from sft import paired_delta

    out = {}
    both: tuple[list, list] = ([], [])
    for t in before:
        if before[t].get("seeds") != after[t].get("seeds"):
            raise SystemExit(f"{t}: the SFT and GRPO evaluations ran different seeds; cannot pair them")
        a, b = before[t]["success_flags"], after[t]["success_flags"]
        out[t] = paired_delta(a, b)
        both[0].extend(a)
        both[1].extend(b)
    out["average"] = paired_delta(*both)
    return out


def _settings(s: dict) -> str:
    return (
        f"{s['mode']} lr {s['lr']:g}, {s['groups_per_task']} groups/task, a {s['noise_level']:g} "
        f"{s['stochastic']}, {s['reward']}"
        + (f", kl {s['kl_beta']:g}" if s["kl_beta"] else "")
        + (", tasks by uncertainty" if s.get("task_sampling") == "uncertain" else "")
    )


if __name__ == "__main__":
    main()
