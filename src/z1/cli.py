"""The `z1` command: collect | sft | eval | rl | demo | report | envs | import.

This is the entry point: process-wide settings (threads, MuJoCo GL backend, OpenMP wait policy) are
made here, once, before anything heavy is imported.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from z1.errors import LimitError, check_float, check_int


def _process_setup(threads: int | None = None) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    # Spin-waiting OpenMP threads next to simulator processes once cost 10x (docs/environments.md#threads).
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
    video: bool = False
    """Store the cameras as mp4 (AV1, LeRobot's default; lossy, smaller) instead of PNG in parquet."""

    def __post_init__(self) -> None:
        check_int(self.episodes, "--episodes", low=1)
        check_float(self.noise, "--noise", low=0.0)
        check_int(self.image_size, "--image-size", low=8, high=4096)
        check_int(self.workers, "--workers", low=0)
        check_int(self.seed, "--seed", low=0)


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
    num_steps: int | None = None
    """Denoise steps K of the ODE sampler (default: the steps the checkpoint's source samples with, e.g.
    `num_inference_steps` of an imported LeRobot pi0.5; 10, openpi's default, when it records none)."""
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

    def __post_init__(self) -> None:
        check_int(self.episodes, "--episodes", low=1)
        check_int(self.h_exec, "--h-exec", low=1)
        if self.num_steps is not None:
            check_int(self.num_steps, "--num-steps", low=1)
        if self.max_steps is not None:
            check_int(self.max_steps, "--max-steps", low=1)
        check_int(self.num_slots, "--num-slots", low=1)
        check_int(self.workers, "--workers", low=0)
        check_int(self.videos, "--videos", low=0)
        check_int(self.threads, "--threads", low=1)
        if self.out is not None and Path(self.out).is_dir():
            raise LimitError(f"--out {self.out} is a directory; pass the path of the JSON file to write")


@dataclass(frozen=True)
class ReportCmd:
    """Write report.html and report.md into a run directory (`z1 demo`, `z1 rl --out` or `z1 sft --out`
    output: whatever it holds is shown, what it lacks is said); with several run directories and
    --out FILE.html, one comparison page instead: success per task with 95% intervals for each run, the
    change against the first run with paired intervals, learning curves on one env-step axis."""

    run_dirs: tyro.conf.Positional[tuple[str, ...]]
    """One run directory (e.g. runs/demo-...), or several to compare (the first is the baseline)."""
    out: str | None = None
    """The comparison page to write (FILE.html; FILE.md and FILE_assets/ beside it). Required with several
    run directories; a single run's report always goes into its directory."""

    def __post_init__(self) -> None:
        if not self.run_dirs:
            raise LimitError("z1 report needs a run directory (or several with --out FILE.html)")
        if len(self.run_dirs) > 1 and self.out is None:
            raise LimitError(
                f"{len(self.run_dirs)} run directories make a comparison page: pass --out FILE.html "
                "(one run's report goes into its own directory)"
            )
        if len(self.run_dirs) == 1 and self.out is not None:
            raise LimitError(
                "--out is for comparison pages of several run directories; one run's report is written "
                f"into {self.run_dirs[0]}"
            )


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
    overwrite: bool = False
    """Replace DST if it already exists and is not empty (otherwise the import refuses to start)."""


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

    def __post_init__(self) -> None:
        check_int(self.seeds, "--seeds", low=1)
        check_float(self.noise, "--noise", low=0.0)


@dataclass(frozen=True)
class EnvsShowCmd:
    """Save the camera images of a task's initial state as PNG files."""

    task: tyro.conf.Positional[str]
    out: str = "runs/show"
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.seed, "--seed", low=0)


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
        video=c.video,
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
    if not 1 <= c.h_exec <= loaded.config.action_horizon:
        raise LimitError(
            f"--h-exec {c.h_exec} must be in 1..{loaded.config.action_horizon}, the action horizon of "
            f"{c.checkpoint}"
        )
    tasks = resolve_tasks(c.tasks)
    if not tasks:
        raise LimitError(f"--tasks {c.tasks!r} names no task")
    num_steps = eval_num_steps(c.num_steps, loaded.conventions)
    if c.videos:
        from z1.media import video_unavailable

        why = video_unavailable()
        if why:
            raise LimitError(f"--videos {c.videos}: {why}; or pass --videos 0")
    venv = make_vector_env(
        suite_for(c.tasks, c.suite), c.num_slots, c.workers, loaded.model.config.vision.image_size, c.ray
    )
    try:
        runner = build_runner(
            loaded.model, loaded.norm, venv.spec, c.h_exec, tokenizer_path=loaded.tokenizer_path
        )
        cfg = EvalConfig(
            episodes_per_task=c.episodes,
            num_steps=num_steps,
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
    console.print(
        markdown_table(result, f"ODE, K={num_steps}, {c.episodes} episodes per task: {c.checkpoint}")
    )
    console.print(f"wrote {out}")


def eval_num_steps(flag: int | None, conventions) -> int:
    """--num-steps if given, else the denoise steps the checkpoint's source samples with, else the
    sampler's default (10, as openpi's sample_actions)."""
    from z1.config import SamplerConfig

    if flag is not None:
        return flag
    return conventions.num_inference_steps or SamplerConfig().num_steps


def _cmd_report(c: ReportCmd) -> None:
    from pathlib import Path

    from z1.report import write_comparison, write_report

    if c.out is not None:
        html, md = write_comparison([Path(d) for d in c.run_dirs], Path(c.out))
    else:
        html, md = write_report(Path(c.run_dirs[0]))
    print(f"wrote {html}\nwrote {md}")


def _cmd_import(c: ImportCmd) -> None:
    from pathlib import Path

    from z1.errors import RunDirError
    from z1.models.errors import CheckpointError
    from z1.models.pi05_import import import_cli

    dst = Path(c.dst)
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst} is a file; DST must be a directory to create")
    if dst.is_dir() and any(dst.iterdir()) and not c.overwrite:
        raise RunDirError(
            f"{dst} exists and is not empty; `z1 import` would replace it. Choose a new DST, or pass "
            "--overwrite to replace it"
        )
    if Path(c.src).expanduser().resolve() == dst.expanduser().resolve():
        raise CheckpointError(f"SRC and DST are the same directory ({dst}); choose another DST")
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
        raise CheckpointError(str(e)) from e


def _cmd_envs(c) -> None:
    _process_setup(1)
    from z1.envs import commands

    if isinstance(c, EnvsListCmd):
        print(commands.list_tasks(c.suite))
    elif isinstance(c, EnvsCheckCmd):
        from z1.train.setup import resolve_tasks

        tasks = resolve_tasks(c.tasks) if c.tasks else None
        commands.check_experts(c.suite, tasks, c.seeds, c.noise)
    else:
        for p in commands.show_task(c.task, c.out, c.seed):
            print(p)


def main(argv: list[str] | None = None) -> None:
    """`z1 ...`: run a command; an error is printed as one message (exit 1, 2 for a bad flag), with the
    traceback only under --debug or Z1_DEBUG=1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("Z1_DEBUG", "").strip() not in ("", "0") or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    cmd = " ".join(a for a in argv[:2] if not a.startswith("-")) if argv[:1] == ["envs"] else argv[:1]
    prog = f"z1 {cmd if isinstance(cmd, str) else ' '.join(cmd)}".strip()
    from z1.cli_errors import describe_error

    try:
        _main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as e:
        if debug:
            raise
        known = describe_error(e)
        if known is None:
            print(
                f"{prog}: internal error: {type(e).__name__}: {e}\n"
                "This is a bug in z1; rerun with --debug (or Z1_DEBUG=1) for the traceback and report it.",
                file=sys.stderr,
            )
            raise SystemExit(1) from None
        code, msg = known
        print(f"{prog}: error: {msg}", file=sys.stderr)
        if code == 2:
            print(f"See `{prog} --help` for the flags.", file=sys.stderr)
        raise SystemExit(code) from None


def _main(argv: list[str]) -> None:
    from z1.demo import DemoConfig
    from z1.train.rl import RLConfig
    from z1.train.sft import SFTConfig

    if argv[:1] in (["sft"], ["rl"]):
        from z1.cli_config import stage_cli

        cfg = stage_cli(argv[0], argv[1:])
        (_cmd_sft if argv[0] == "sft" else _cmd_rl)(cfg)
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
        subcommands,
        prog="z1",
        args=argv,
        description="z1: efficient RL post-training of flow VLA policies. Errors are one message; add "
        "--debug (or set Z1_DEBUG=1) to see the traceback.",
    )
    if isinstance(cmd, CollectCmd):
        _cmd_collect(cmd)
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


if __name__ == "__main__":
    main()
