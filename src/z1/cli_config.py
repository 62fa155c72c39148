"""`z1 sft` and `z1 rl` arguments -> their config: a run preset or a recorded run as the defaults of every
field (`--preset NAME`, `--config FILE_OR_RUN_DIR`), flags on top, and `--help` that shows the flags a run
is usually tuned by (`--help-all`: every one).
"""

from __future__ import annotations

from z1.errors import LimitError


def _pop_option(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    """`flag VALUE` or `flag=VALUE` taken out of argv (the last one wins, like any other flag)."""
    value, rest, i = None, [], 0
    while i < len(argv):
        a = argv[i]
        if a == flag:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise LimitError(f"{flag} needs a value")
            value, i = argv[i + 1], i + 2
            continue
        if a.startswith(flag + "="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return value, rest


# Flags that `z1 rl --help` leaves out (every one still works, and `--help-all` lists them): the method's
# constants (clip guards, reward-scale floors, EMA rates, LoRA details), scale-out plumbing that chooses
# itself, and the tree's fine controls. What remains is what a run is usually tuned by.
RL_ADVANCED_FLAGS = frozenset(
    f"--{f}"
    for f in (
        "suite",
        "grad-clip",
        "image-size",
        "calibration-episodes",
        "wave-rng",
        "rollout.window",
        "rollout.row-seeds",
        "rollout.inference",
        "rollout.branch-at",
        "reward.p0",
        "reward.sigma-min",
        "reward.range-delta",
        "reward.success-ema",
        "reward.t-min-quantile",
        "reward.length-window",
        "grpo.dual-clip",
        "grpo.adv-clip",
        "grpo.log-ratio-clamp",
        "grpo.kl-target",
        "selective.lora-rank",
        "selective.lora-alpha",
        "selective.lora-layers",
        "selective.lora-targets",
        "selective.weight-decay",
        "advantage.w-loc",
        "advantage.w-glob",
        "task-sampling.eps",
        "task-sampling.min-groups",
    )
)


def concise_help(text: str, hidden: frozenset[str]) -> tuple[str, int]:
    """tyro's plain-text help (as it renders into a pipe) with the rows of `hidden` flags removed, and any
    option group left without a flag; returns the text and how many flags went."""
    import re

    groups: list[list[str]] = [[]]
    for line in text.splitlines():
        if re.match(r" [\w-]+ options\s*$", line):  # each option group starts with " <name> options"
            groups.append([])
        groups[-1].append(line)
    out: list[str] = []
    removed = 0
    for group in groups:
        kept: list[str] = []
        rows = shown = 0
        skipping = False
        for line in group:
            row = re.match(r" {1,2}(-{1,2}[a-z][-\w.]*)", line)
            if row:
                rows += 1
                skipping = row.group(1).rstrip(",") in hidden
                removed += skipping
                shown += not skipping
            elif not re.match(r" {3,}\S", line):
                skipping = False  # a group header, separator or description
            if not skipping:
                kept.append(line)
        if kept and (shown or not rows):
            out.append("\n".join(kept))
    return "\n".join(out) + "\n", removed


_DEFAULTS_HELP = """
Defaults: --preset NAME takes every default from a run preset (below); --config FILE replays a run:
the resolved settings that a run wrote (<out>/{stage}_config.json, or the run directory itself) become
the defaults. Flags after either override field by field (e.g. a new --out)."""


def stage_cli(stage: str, args: list[str]):
    """`z1 sft|rl [--preset NAME | --config FILE] [flags]` -> the stage's config."""
    import tyro

    from z1.config import ConfigError
    from z1.presets import presets_help, run_preset
    from z1.train.rl import RLConfig
    from z1.train.runinfo import read_run_config
    from z1.train.sft import SFTConfig

    cls = SFTConfig if stage == "sft" else RLConfig
    preset, args = _pop_option(args, "--preset")
    config, args = _pop_option(args, "--config")
    if preset is not None and config is not None:
        raise ConfigError("--preset and --config both set every default; pass one of them")
    default = None
    if preset is not None:
        p = run_preset(preset)
        default = p.rl if stage == "rl" else p.sft(tyro.MISSING)
    elif config is not None:
        default = read_run_config(config, cls, stage)
    description = (cls.__doc__ or "").strip() + "\n" + _DEFAULTS_HELP.format(stage=stage)
    description += "\n\n" + presets_help()
    hidden = RL_ADVANCED_FLAGS if stage == "rl" else frozenset()
    if "--help-all" in args:
        args = ["--help" if a == "--help-all" else a for a in args]
    elif hidden and ("--help" in args or "-h" in args):
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            tyro.cli(cls, default=default, args=args, prog=f"z1 {stage}", description=description)
        text, removed = concise_help(buf.getvalue(), hidden)
        print(text + f"{removed} advanced options are not shown (they all work): `z1 {stage} --help-all`.")
        raise SystemExit(0)
    cfg = tyro.cli(cls, default=default, args=args, prog=f"z1 {stage}", description=description)
    if stage == "rl" and not cfg.init:
        raise SystemExit("z1 rl: --init CHECKPOINT is required (an SFT or imported checkpoint directory)")
    return cfg
