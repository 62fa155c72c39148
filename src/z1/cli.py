"""The `z1` command: collect | sft | eval | rl | demo | report | envs | import.

This is the entry point: process-wide settings (threads, MuJoCo GL backend, OpenMP wait policy) are
made here, once, before anything heavy is imported.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Literal

import tyro


def _process_setup(threads: int | None = None) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    # Spin-waiting OpenMP threads next to simulator processes once cost 10x (metaworld.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    if threads is not None:
        torch.set_num_threads(max(1, threads))


def _require_ray_for(mode: str | None) -> None:
    """--ray without Ray installed: stop before any work, with the install command."""
    if mode is None:
        return
    from z1.distributed.cluster import RayUnavailableError, require_ray

    try:
        require_ray()
    except RayUnavailableError as e:
        raise SystemExit(f"--ray {mode}: {e}") from None


@dataclass(frozen=True)
class CollectCmd:
    """Collect scripted-expert demonstrations into a LeRobotDataset v3 directory."""

    out: str
    """Dataset directory to create (it appears only when complete)."""
    tasks: str = "mw-quick"
    """Task set (mw-quick | mt10 | mt50) or comma-separated task names."""
    episodes: int = 20
    """Successful episodes per task."""
    noise: float = 0.1
    """Std of the Gaussian noise added to the executed expert action (labels stay clean)."""
    image_size: int = 64
    """Camera resolution (square)."""
    workers: int = 2
    """Worker processes (one simulator each)."""
    seed: int = 0
    """First episode seed."""


@dataclass(frozen=True)
class EvalCmd:
    """Evaluate a checkpoint: N episodes per task at fixed seeds with the deterministic ODE sampler."""

    checkpoint: str
    """z1 checkpoint directory."""
    tasks: str = "mw-quick"
    """Task set or comma-separated task names."""
    suite: str | None = None
    """Simulator suite (default: the suite of the task set)."""
    episodes: int = 50
    """Episodes per task."""
    out: str | None = None
    """Write the JSON result here (default: <checkpoint>/../eval.json)."""
    h_exec: int = 4
    """Actions executed per chunk."""
    num_steps: int = 10
    """Denoise steps K of the ODE sampler."""
    max_steps: int | None = None
    """Episode cap in env steps (default: the env's limit)."""
    num_slots: int = 8
    """Env slots (episodes in flight)."""
    workers: int = 2
    """Env worker processes (0 = in-process), or Ray actors with --ray (0 = one per cluster CPU)."""
    ray: Literal["local", "auto"] | None = None
    """Env slots on Ray actors: local starts a cluster here, auto joins `ray start`'s (README)."""
    videos: int = 0
    """Save this many episodes per task as mp4 next to the JSON."""
    threads: int = 1
    """Torch threads."""


@dataclass(frozen=True)
class ReportCmd:
    """Write report.html and report.md for a run directory."""

    run_dir: tyro.conf.Positional[str]
    """The run directory (e.g. runs/demo-...)."""


@dataclass(frozen=True)
class ImportCmd:
    """Import an openpi-PyTorch or LeRobot pi0.5 checkpoint into z1's format."""

    src: tyro.conf.Positional[str]
    """Directory with model.safetensors (+ config.json, norm stats)."""
    dst: tyro.conf.Positional[str]
    """z1 checkpoint directory to write."""
    action_horizon: int | None = None
    """Action horizon, if the source's config does not say (openpi files)."""
    norm_stats: str | None = None
    """Explicit norm_stats.json (openpi assets/<id>/norm_stats.json) or LeRobot
    *normalizer_processor.safetensors."""
    tokenizer: str | None = None
    """PaliGemma's SentencePiece tokenizer.model (needed by real pi0.5; stored in the checkpoint)."""
    accept: tuple[str, ...] = ()
    """Source config fields whose effect z1 does not implement (the import names them when it stops),
    to import anyway; the accepted differences are recorded in the checkpoint's extra.json."""


@dataclass(frozen=True)
class EnvsListCmd:
    """List the tasks of a suite (or all suites) and the named task sets."""

    suite: tyro.conf.Positional[str | None] = None


@dataclass(frozen=True)
class EnvsCheckCmd:
    """Run the scripted experts and print a per-task success table."""

    suite: tyro.conf.Positional[str]
    tasks: str | None = None
    """Task set or comma-separated names (default: every task of the suite)."""
    seeds: int = 10
    """Episodes (seeds) per task."""
    noise: float = 0.1
    """Action noise std."""


@dataclass(frozen=True)
class EnvsShowCmd:
    """Save the camera images of a task's initial state as PNG files."""

    task: tyro.conf.Positional[str]
    out: str = "runs/show"
    seed: int = 0


def _cmd_collect(c: CollectCmd) -> None:
    from z1.data.collect import collect
    from z1.train.setup import resolve_tasks

    _process_setup(1)
    summary = collect(
        resolve_tasks(c.tasks),
        c.episodes,
        c.out,
        noise=c.noise,
        seed=c.seed,
        image_size=(c.image_size, c.image_size),
        workers=c.workers,
    )
    print(summary)


def _cmd_sft(c) -> None:
    from rich.console import Console

    from z1.train.sft import run_sft

    _require_ray_for(c.ray)
    _process_setup(c.threads)
    print(run_sft(c, Console()))


def _cmd_rl(c) -> None:
    from rich.console import Console

    from z1.train.rl import run_rl

    _require_ray_for(c.ray)
    _process_setup(c.threads)
    run_rl(c, Console())


def _cmd_eval(c: EvalCmd) -> None:
    from pathlib import Path

    from rich.console import Console

    from z1.evaluate import EvalConfig, evaluate, markdown_table
    from z1.fsutil import write_json_atomic
    from z1.models.checkpoint import load_checkpoint
    from z1.train.setup import build_runner, make_vector_env, progress_bar, resolve_tasks, suite_for

    _require_ray_for(c.ray)
    _process_setup(c.threads)
    console = Console()
    loaded = load_checkpoint(Path(c.checkpoint))
    tasks = resolve_tasks(c.tasks)
    venv = make_vector_env(
        suite_for(c.tasks, c.suite), c.num_slots, c.workers, loaded.model.config.vision.image_size, c.ray
    )
    try:
        runner = build_runner(
            loaded.model, loaded.norm, venv.spec, c.h_exec, tokenizer_path=loaded.tokenizer_path
        )
        cfg = EvalConfig(
            episodes_per_task=c.episodes,
            num_steps=c.num_steps,
            max_steps=c.max_steps,
            videos_per_task=c.videos,
        )
        with progress_bar(console) as progress:
            task = progress.add_task("eval", total=len(tasks) * c.episodes)
            result = evaluate(
                runner, venv, tasks, cfg, progress=lambda done, total: progress.update(task, completed=done)
            )
    finally:
        venv.close()
    out = Path(c.out) if c.out else Path(c.checkpoint).parent / "eval.json"
    write_json_atomic(out, result.to_json())
    if c.videos:
        from z1.media import save_videos

        save_videos(result.frames, out.parent / "videos", prefix="eval")
    console.print(markdown_table(result, f"{c.checkpoint} (ODE, {c.episodes} episodes per task)"))
    console.print(f"wrote {out}")


def _cmd_report(c: ReportCmd) -> None:
    from pathlib import Path

    from z1.report import write_report

    html, md = write_report(Path(c.run_dir))
    print(f"wrote {html}\nwrote {md}")


def _cmd_import(c: ImportCmd) -> None:
    from pathlib import Path

    from z1.models.checkpoint import CheckpointError
    from z1.models.pi05_import import import_cli

    _process_setup(None)
    try:
        import_cli(
            Path(c.src),
            Path(c.dst),
            action_horizon=c.action_horizon,
            norm_stats=Path(c.norm_stats) if c.norm_stats else None,
            tokenizer=c.tokenizer,
            accept=c.accept,
        )
    except CheckpointError as e:
        raise SystemExit(f"z1 import: {e}") from None


def _cmd_envs(c) -> None:
    _process_setup(1)
    from z1.envs import commands

    if isinstance(c, EnvsListCmd):
        print(commands.list_tasks(c.suite))
    elif isinstance(c, EnvsCheckCmd):
        from z1.envs.registry import task_set

        tasks = None
        if c.tasks:
            tasks = (
                [t for t in c.tasks.split(",")]
                if "," in c.tasks or c.tasks.endswith("-v3")
                else task_set(c.tasks)
            )
        commands.check_experts(c.suite, tasks, c.seeds, c.noise)
    else:
        for p in commands.show_task(c.task, c.out, c.seed):
            print(p)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    from z1.demo import DemoConfig
    from z1.train.rl import RLConfig
    from z1.train.sft import SFTConfig

    if argv[:1] == ["rl"] and "--preset" in argv:
        # `z1 rl --preset NAME [overrides...]`: the preset supplies the defaults of every field.
        from z1.presets import rl_preset

        i = argv.index("--preset")
        if i + 1 >= len(argv):
            raise SystemExit("--preset needs a name: mw-quick | mt10 | robosuite | robocasa24-pi05")
        preset = rl_preset(argv[i + 1])
        cfg = tyro.cli(RLConfig, default=preset, args=argv[1:i] + argv[i + 2 :], prog="z1 rl")
        if not cfg.init:
            raise SystemExit("z1 rl: --init CHECKPOINT is required (an SFT or imported checkpoint directory)")
        _cmd_rl(cfg)
        return
    if argv[:1] == ["envs"]:
        cmd = tyro.extras.subcommand_cli_from_dict(
            {"list": EnvsListCmd, "check": EnvsCheckCmd, "show": EnvsShowCmd}, prog="z1 envs", args=argv[1:]
        )
        _cmd_envs(cmd)
        return
    subcommands = {
        "collect": CollectCmd,
        "sft": SFTConfig,
        "eval": EvalCmd,
        "rl": RLConfig,
        "demo": DemoConfig,
        "report": ReportCmd,
        "import": ImportCmd,
        "envs": EnvsListCmd,  # `z1 envs list|check|show` is dispatched above; this entry is its --help line
    }
    cmd = tyro.extras.subcommand_cli_from_dict(
        subcommands, prog="z1", args=argv, description="z1: efficient RL post-training of flow VLA policies"
    )
    if isinstance(cmd, CollectCmd):
        _cmd_collect(cmd)
    elif isinstance(cmd, SFTConfig):
        _cmd_sft(cmd)
    elif isinstance(cmd, RLConfig):
        _cmd_rl(cmd)
    elif isinstance(cmd, EvalCmd):
        _cmd_eval(cmd)
    elif isinstance(cmd, DemoConfig):
        from z1.demo import run_demo

        _process_setup(cmd.threads)
        run_demo(cmd)
    elif isinstance(cmd, ReportCmd):
        _cmd_report(cmd)
    elif isinstance(cmd, ImportCmd):
        _cmd_import(cmd)
    elif isinstance(cmd, EnvsListCmd):
        _cmd_envs(cmd)


if __name__ == "__main__":
    main()
