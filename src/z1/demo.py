"""`z1 demo`: collect -> SFT -> eval -> GRPO -> eval on a preset, then a report.

Everything the run makes goes into one run directory:
    run.json, timings.json, data/ (demonstrations), sft_ckpt/, sft_metrics.jsonl, eval_sft.json,
    rl_ckpt/, rl_metrics.jsonl, eval_rl.json, filmstrips/, report.html, report.md
Any stage can be skipped by pointing at an existing dataset (`--dataset`) or SFT checkpoint
(`--sft-checkpoint`).
"""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from z1.config import ConfigError
from z1.evaluate import EvalConfig, EvalResult, evaluate, markdown_table
from z1.fsutil import write_json_atomic
from z1.presets import RunPreset, quick, run_preset
from z1.train.rl import run_rl
from z1.train.sft import run_sft


@dataclass(frozen=True)
class DemoConfig:
    """The whole z1 pipeline on a laptop: demonstrations, SFT, evaluation, GRPO, evaluation, report."""

    preset: str = "mw-quick"
    """Run preset (z1.presets: tasks, policy, SFT recipe, GRPO settings, evaluation episodes)."""
    quick: bool = False
    """The preset with tiny budgets that still walk the whole path (about 5 minutes; its numbers mean
    nothing)."""
    out: str | None = None
    """Run directory (default: runs/demo-<timestamp>)."""
    dataset: str | None = None
    """Skip collection: use this LeRobot dataset."""
    sft_checkpoint: str | None = None
    """Skip SFT: use this z1 checkpoint."""
    skip_rl: bool = False
    """Stop after the SFT evaluation."""
    tasks: str | None = None
    """Override the preset's task set (comma-separated names or a set name)."""
    workers: int = 2
    """Env worker processes."""
    threads: int = 1
    """Torch threads of the learner (the env workers take the other core)."""
    seed: int = 0
    """Seed of every stage."""
    overwrite: bool = False
    """Allow an existing, non-empty `--out` (its demonstrations and checkpoints are replaced)."""


def _machine() -> dict:
    import os

    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def _eval_stage(ckpt: Path, tasks: list[str], p: RunPreset, cfg: DemoConfig, run: Path, stage: str, console):
    from z1.media import save_examples
    from z1.models.checkpoint import load_checkpoint
    from z1.train.setup import build_runner, make_vector_env, progress_bar, suite_for

    loaded = load_checkpoint(ckpt)
    venv = make_vector_env(
        suite_for(",".join(tasks)),
        max(2, min(8, len(tasks) * 2)),
        cfg.workers,
        loaded.model.config.vision.image_size,
    )
    try:
        runner = build_runner(
            loaded.model, loaded.norm, venv.spec, p.rl.rollout.h_exec, tokenizer_path=loaded.tokenizer_path
        )
        ro = p.rl.rollout
        ecfg = EvalConfig(
            episodes_per_task=p.eval_episodes,
            num_steps=ro.num_steps,
            max_steps=ro.max_steps,
            record_examples=True,  # a success and a failure per task for the report's clips
        )
        with progress_bar(console) as progress:
            task = progress.add_task(f"eval {stage}", total=len(tasks) * p.eval_episodes)
            result: EvalResult = evaluate(
                runner, venv, tasks, ecfg, progress=lambda d, t: progress.update(task, completed=d)
            )
    finally:
        venv.close()
    write_json_atomic(run / f"eval_{stage}.json", result.to_json())
    media = save_examples(result.examples, run, stage)
    if media.videos_skipped:
        console.print(f"[yellow]{media.videos_skipped}[/yellow]")
    console.print(markdown_table(result, f"{stage.upper()} policy"))
    return result


def summary_table(sft: EvalResult | None, rl: EvalResult | None) -> str:
    lines = ["| task | SFT success [95% CI] | RL success [95% CI] | delta |", "|---|---|---|---|"]
    tasks = list((sft or rl).tasks) if (sft or rl) else []
    for t in tasks:
        s = sft.tasks.get(t) if sft else None
        r = rl.tasks.get(t) if rl else None
        fs = f"{100 * s.rate:.0f}% [{100 * s.ci_low:.0f}, {100 * s.ci_high:.0f}]" if s else "-"
        fr = f"{100 * r.rate:.0f}% [{100 * r.ci_low:.0f}, {100 * r.ci_high:.0f}]" if r else "-"
        d = f"{100 * (r.rate - s.rate):+.0f}" if (s and r) else "-"
        lines.append(f"| {t} | {fs} | {fr} | {d} |")
    if sft and rl:
        lines.append(
            f"| **average** | **{100 * sft.average:.1f}%** | **{100 * rl.average:.1f}%** "
            f"| **{100 * (rl.average - sft.average):+.1f}** |"
        )
    return "\n".join(lines)


def run_demo(cfg: DemoConfig) -> Path:
    from rich.console import Console

    from z1.data.collect import collect
    from z1.train.setup import resolve_tasks

    console = Console()
    p = run_preset(cfg.preset)
    if cfg.quick:
        p = quick(p)
    if cfg.tasks:
        p = replace(p, rl=replace(p.rl, tasks=cfg.tasks))
    if p.demos_per_task < 1 and not (cfg.dataset or cfg.sft_checkpoint):
        raise ConfigError(
            f"--preset {cfg.preset} has no scripted experts to collect demonstrations with; pass --dataset "
            "(a LeRobot dataset) or --sft-checkpoint"
        )
    tasks = resolve_tasks(p.rl.tasks)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run = Path(cfg.out or f"runs/demo-{stamp}{'-quick' if cfg.quick else ''}")
    if run.exists() and any(run.iterdir()) and not cfg.overwrite:
        raise ConfigError(
            f"--out {run}: the directory exists and is not empty; choose another --out, or pass --overwrite "
            "to replace what a previous demo wrote there"
        )
    run.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    write_json_atomic(
        run / "run.json",
        {
            "preset": cfg.preset,
            "quick": cfg.quick,
            "tasks": tasks,
            "started": stamp,
            "preset_settings": asdict(p),
            "config": asdict(cfg),
            "machine": _machine(),
        },
    )
    console.rule(
        f"[bold]z1 demo[/bold] · {cfg.preset}{' (quick)' if cfg.quick else ''} · {len(tasks)} tasks · {run}"
    )

    dataset = Path(cfg.dataset) if cfg.dataset else run / "data"
    if not cfg.dataset:
        console.rule("1/5 demonstrations (scripted experts)")
        t0 = time.perf_counter()
        if dataset.exists():
            shutil.rmtree(dataset)
        info = collect(tasks, p.demos_per_task, dataset, noise=0.1, seed=cfg.seed, workers=cfg.workers)
        timings["collect"] = time.perf_counter() - t0
        console.print(info)

    sft_ckpt = Path(cfg.sft_checkpoint) if cfg.sft_checkpoint else run / "sft_ckpt"
    if not cfg.sft_checkpoint:
        console.rule("2/5 supervised fine-tuning (flow matching)")
        t0 = time.perf_counter()
        import torch

        # The demo is its own entry point for these stages: SFT has the machine to itself (no env workers)
        # and takes 2 threads; GRPO's learner takes --threads beside its env workers.
        torch.set_num_threads(2)
        run_sft(
            p.sft(
                str(dataset),
                out=str(run),
                threads=2,
                seed=cfg.seed,
                ckpt_every=max(1, p.sft_steps),
                overwrite=cfg.overwrite,
            ),
            console,
        )
        timings["sft"] = time.perf_counter() - t0

    console.rule("3/5 evaluate the SFT policy (ODE)")
    t0 = time.perf_counter()
    sft_eval = _eval_stage(sft_ckpt, tasks, p, cfg, run, "sft", console)
    timings["eval_sft"] = time.perf_counter() - t0

    rl_eval = None
    rl_env_steps = 0.0
    if not cfg.skip_rl:
        console.rule("4/5 task-wise GRPO (Flow-SDE, tree rollouts, completion-aware rewards)")
        t0 = time.perf_counter()
        # The preset's GRPO settings as they are; the demo supplies only where and with what it runs.
        rl_cfg = replace(
            p.rl,
            init=str(sft_ckpt),
            out=str(run),
            tasks=",".join(tasks),
            workers=cfg.workers,
            threads=cfg.threads,
            seed=cfg.seed,
            overwrite=cfg.overwrite,
        )
        import torch

        torch.set_num_threads(cfg.threads)
        summary = run_rl(rl_cfg, console)
        rl_env_steps = summary["env_steps"]
        timings["rl"] = time.perf_counter() - t0
        console.rule("5/5 evaluate the GRPO policy (ODE)")
        t0 = time.perf_counter()
        rl_eval = _eval_stage(run / "rl_ckpt", tasks, p, cfg, run, "rl", console)
        timings["eval_rl"] = time.perf_counter() - t0
    write_json_atomic(run / "timings.json", timings)

    from z1.report import write_report

    html, md = write_report(run)
    console.rule("[bold]result")
    console.print(summary_table(sft_eval, rl_eval))
    console.print(f"GRPO env steps: {int(rl_env_steps)}")
    console.print(
        "wall time: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
        + f" (total {sum(timings.values()) / 60:.1f} min)"
    )
    console.print(f"report: {html}\n        {md}")
    (run / "summary.md").write_text(summary_table(sft_eval, rl_eval) + "\n")
    return run
