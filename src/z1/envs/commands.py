"""Functions behind `z1 envs ...`: list tasks, check the scripted experts, save a task's camera images."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from z1.envs.base import EnvError, unknown_task_error
from z1.envs.registry import SUITES, _suite_task_sets, make_env


def _render_table(table: Table) -> str:
    buf = io.StringIO()
    Console(file=buf, width=160, force_terminal=False).print(table)
    return buf.getvalue()


def list_tasks(suite: str | None = None) -> str:
    """A table of every task (of one suite, or of every suite whose adapter imports) with its task sets
    and instruction."""
    suites = [suite] if suite else list(SUITES)
    table = Table(title="z1 tasks")
    for col in ("suite", "task", "task sets", "instruction"):
        table.add_column(col)
    for name in suites:
        try:
            sets = _suite_task_sets(name)
            env = make_env(name, render=False)
        except EnvError:
            if suite:
                raise
            continue
        try:
            for task in env.tasks():
                member = ", ".join(k for k, v in sets.items() if task in v)
                table.add_row(name, task, member, env.instruction(task))
        finally:
            env.close()
    return _render_table(table)


def check_experts(
    suite: str,
    tasks: Sequence[str] | None,
    seeds: Sequence[int] | int,
    noise: float = 0.1,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the scripted expert (plus Gaussian noise of std `noise`, clipped to the bounds) on every
    task x seed until success or the time limit, without rendering. Prints a per-task table.

    `tasks` None: every task of the suite; `seeds` an int n: seeds 0..n-1.

    Returns {"suite", "noise", "seeds", "tasks": {task: {"success_rate", "successes", "episodes",
    "median_steps_to_success"}}}.
    """
    console = console or Console()
    if isinstance(seeds, int):
        if seeds < 1:
            raise EnvError(f"--seeds must be >= 1, got {seeds}")
        seeds = range(seeds)
    if noise < 0:
        raise EnvError(f"--noise must be >= 0, got {noise}")
    env = make_env(suite, render=False)
    known = env.tasks()
    tasks = list(known) if tasks is None else list(tasks)
    for task in tasks:
        if task not in known:
            env.close()
            raise unknown_task_error(task, known, suite)
    low, high = np.asarray(env.spec.action_low), np.asarray(env.spec.action_high)
    results: dict[str, Any] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            bar = progress.add_task("experts", total=len(tasks) * len(seeds))
            for task in tasks:
                steps_to_success: list[int] = []
                for seed in seeds:
                    progress.update(bar, description=f"{task} seed {seed}")
                    rng = np.random.default_rng([int(seed), 17])
                    env.reset(task, int(seed))
                    for t in range(env.spec.max_steps):
                        a = env.expert_action()
                        if noise > 0:
                            a = np.clip(a + rng.normal(0.0, noise, a.shape), low, high)
                        if env.step(a).success:
                            steps_to_success.append(t + 1)
                            break
                    progress.advance(bar)
                results[task] = {
                    "success_rate": len(steps_to_success) / max(len(seeds), 1),
                    "successes": len(steps_to_success),
                    "episodes": len(seeds),
                    "median_steps_to_success": float(np.median(steps_to_success))
                    if steps_to_success
                    else None,
                }
    finally:
        env.close()
    table = Table(title=f"{suite} scripted experts, noise {noise}, {len(seeds)} seeds")
    for col in ("task", "success", "median steps"):
        table.add_column(col)
    for task, r in results.items():
        style = "red" if r["success_rate"] < 0.9 else ""
        med = "-" if r["median_steps_to_success"] is None else f"{r['median_steps_to_success']:.0f}"
        table.add_row(task, f"{r['success_rate']:.2f}", med, style=style)
    console.print(table)
    return {"suite": suite, "noise": noise, "seeds": [int(s) for s in seeds], "tasks": results}


def _suite_of_task(task: str) -> str:
    known: list[str] = []
    for suite in SUITES:
        try:
            env = make_env(suite, render=False)
        except (EnvError, TypeError):
            continue
        try:
            tasks = env.tasks()
        finally:
            env.close()
        if task in tasks:
            return suite
        known += tasks
    raise unknown_task_error(task, known, "any")


def show_task(
    task: str, out_dir: str | Path, seed: int = 0, image_size: tuple[int, int] = (128, 128)
) -> list[Path]:
    """Reset `task` with `seed` and save one PNG per camera to `out_dir`; returns the paths."""
    from PIL import Image

    suite = _suite_of_task(task)
    env = make_env(suite, image_size=image_size)
    try:
        obs = env.reset(task, seed)
    finally:
        env.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for cam, img in obs.images.items():
        p = out / f"{task}_seed{seed}_{cam}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths
