"""SFT benchmark: which levers make the laptop policy see. Variants side by side in one run.

    MUJOCO_GL=egl .venv/bin/python bench/sft.py --tasks mw-quick --variants base,p8,conv8,conv8-aug
    MUJOCO_GL=egl .venv/bin/python bench/sft.py --tasks mt10 --variants base,tiny --demos 10 --steps 3000
    .venv/bin/python bench/sft.py --list      # the variants and what each changes

Each variant is the `tiny` (or `small`) policy preset with a few fields changed (patch size, conv stem,
image size, depth/width, augmentation, demonstrations per task, SFT length / learning rate). Per variant:
SFT success per task with Wilson 95% intervals (`--eval-episodes` ODE episodes per task, the same eval seeds
for every variant, so each delta against the first variant is paired by seed and gets its own 95%
interval), SFT wall time, training samples/s, render ms per observation at the variant's image size,
parameter count. Datasets are collected once per (demos, image size) and shared by the variants that
use them. Results merge into bench/results/sft_<tasks>.json and .md (a re-run variant replaces its row);
runs (datasets, checkpoints) stay under runs/bench-sft-<tasks>/ for bench/rl.py.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Variant:
    """One row of the benchmark: a policy preset with fields changed, and the SFT recipe."""

    doc: str
    preset: str = "tiny"
    vision: dict = field(default_factory=dict)  # VisionConfig fields
    vlm: dict = field(default_factory=dict)  # GemmaConfig fields of the VLM
    expert: dict = field(default_factory=dict)  # GemmaConfig fields of the action expert
    augment: bool = False
    demos: int | None = None  # demonstrations per task (default: --demos)
    steps: int | None = None  # SFT steps (default: --steps)
    lr: float | None = None  # peak learning rate (default: --lr); the final lr is a tenth of it
    batch: int | None = None  # default: --batch


# The levers of the issue, one or two at a time against `base` (the old tiny preset, frozen here so that
# the comparison survives preset changes). conv8 = a conv stem down to an 8x8 grid (64 tokens per camera).
_OLD_TINY = {"patch": 16, "image_size": 64, "stem": "patch"}
_CONV16 = {**_OLD_TINY, "stem": "conv", "stem_channels": 16}
VARIANTS: dict[str, Variant] = {
    "base": Variant("old tiny: 64 px, 16-px patches (16 tokens/camera), patch stem", vision=_OLD_TINY),
    "p8": Variant("8-px patches (64 tokens/camera)", vision={**_OLD_TINY, "patch": 8}),
    "conv16": Variant(
        "conv stem, 16-px grid (16 tokens/camera)", vision={**_OLD_TINY, "stem": "conv", "stem_channels": 16}
    ),
    "conv8": Variant(
        "conv stem, 8-px grid (64 tokens/camera)",
        vision={**_OLD_TINY, "stem": "conv", "patch": 8, "stem_channels": 16},
    ),
    "conv8-c16": Variant(
        "conv stem (16 channels), 8-px grid",
        vision={**_OLD_TINY, "stem": "conv", "patch": 8, "stem_channels": 16},
    ),
    "conv8-c8": Variant(
        "conv stem (8 channels), 8-px grid",
        vision={**_OLD_TINY, "stem": "conv", "patch": 8, "stem_channels": 8},
    ),
    "aug": Variant("base + random-shift augmentation (pad 4 px)", vision=_OLD_TINY, augment=True),
    "d50": Variant("base + 50 demonstrations per task", vision=_OLD_TINY, demos=50),
    "d50-aug": Variant(
        "base + 50 demonstrations per task + augmentation", vision=_OLD_TINY, demos=50, augment=True
    ),
    "p8-d50": Variant(
        "8-px patches + 50 demonstrations per task", vision={**_OLD_TINY, "patch": 8}, demos=50
    ),
    "conv16-d50": Variant(
        "conv stem (16-px grid) + 50 demonstrations per task",
        vision={**_OLD_TINY, "stem": "conv", "stem_channels": 16},
        demos=50,
    ),
    "conv16-aug": Variant(
        "conv stem (16-px grid) + augmentation",
        vision={**_OLD_TINY, "stem": "conv", "stem_channels": 16},
        augment=True,
    ),
    "conv8-aug": Variant(
        "conv8 + random-shift augmentation", vision={**_OLD_TINY, "stem": "conv", "patch": 8}, augment=True
    ),
    "conv8-d50": Variant(
        "conv8 + 50 demonstrations per task", vision={**_OLD_TINY, "stem": "conv", "patch": 8}, demos=50
    ),
    "conv8-96": Variant(
        "conv8 at 96 px (144 tokens/camera)",
        vision={**_OLD_TINY, "stem": "conv", "patch": 8, "image_size": 96},
    ),
    "conv8-wide": Variant(
        "conv8, vision and VLM 128 wide (expert 64)",
        vision={**_OLD_TINY, "stem": "conv", "patch": 8, "width": 128, "mlp_dim": 256, "num_heads": 4},
        vlm={"width": 128, "mlp_dim": 256},
        expert={"width": 64, "mlp_dim": 128},
    ),
    "conv8-deep": Variant(
        "conv8, 4 vision blocks", vision={**_OLD_TINY, "stem": "conv", "patch": 8, "depth": 4}
    ),
    "conv8-long": Variant(
        "conv8, twice the SFT steps", vision={**_OLD_TINY, "stem": "conv", "patch": 8}, steps=4000
    ),
    "conv8-lr": Variant("conv8, peak lr 1e-3", vision={**_OLD_TINY, "stem": "conv", "patch": 8}, lr=1e-3),
    # Around the laptop preset (conv16): one lever at a time at the same ~8-minute SFT budget, plus the
    # longer SFT that shows how far the budget itself holds the policy back.
    "conv16-lr": Variant("conv16, peak lr 1e-3", vision=_CONV16, lr=1e-3),
    "conv16-c32": Variant("conv16 with 32-64-128 stem channels", vision={**_CONV16, "stem_channels": 32}),
    "conv16-96": Variant("conv16 at 96 px (36 tokens/camera)", vision={**_CONV16, "image_size": 96}),
    "conv16-long": Variant("conv16, twice the SFT steps (4000)", vision=_CONV16, steps=4000),
    "conv16-b64": Variant("conv16, batch 64 at half the steps (1000)", vision=_CONV16, batch=64, steps=1000),
    "tiny": Variant("the tiny preset as it is now (no changes)"),
    "small": Variant("the small preset as it is now (no changes)", preset="small", batch=32),
}


def policy_of(v: Variant):
    from z1.config import policy_preset

    base = policy_preset(v.preset)
    return replace(
        base,
        vision=replace(base.vision, **v.vision),
        vlm=replace(base.vlm, **v.vlm),
        expert=replace(base.expert, **v.expert),
    )


def render_ms(image_size: int, cameras: tuple[str, ...], reps: int = 40) -> float:
    """Wall ms one observation (all cameras) adds to an env step at this image size: step with and without
    rendering, interleaved, on one Meta-World task in this process."""
    import numpy as np

    from z1.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv(image_size=(image_size, image_size), cameras=cameras)
    try:
        env.reset("drawer-open-v3", 0)
        zero = np.zeros(env.spec.action_dim)
        with_obs, without = [], []
        for i in range(reps):
            for observe, acc in (
                ((True, with_obs), (False, without)) if i % 2 else ((False, without), (True, with_obs))
            ):
                t0 = time.perf_counter()
                env.step(zero, observe=observe)
                acc.append(time.perf_counter() - t0)
    finally:
        env.close()
    return 1000 * (float(np.median(with_obs)) - float(np.median(without)))


def paired_delta(a: list[bool], b: list[bool]) -> tuple[float, float, float]:
    """Mean of b - a over paired episodes (same eval seeds) and its normal 95% interval."""
    d = [float(y) - float(x) for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / max(n - 1, 1)
    half = 1.96 * math.sqrt(var / n)
    return mean, mean - half, mean + half


def evaluate_checkpoint(ckpt: Path, tasks: list[str], args, console):
    from z1.evaluate import EvalConfig, evaluate
    from z1.models.checkpoint import load_checkpoint
    from z1.train.setup import build_runner, make_vector_env, progress_bar, suite_for

    loaded = load_checkpoint(ckpt)
    slots = max(2, min(8, 2 * len(tasks)))
    venv = make_vector_env(
        suite_for(",".join(tasks)), slots, args.workers, loaded.model.config.vision.image_size
    )
    try:
        runner = build_runner(loaded.model, loaded.norm, venv.spec, args.h_exec)
        ecfg = EvalConfig(
            episodes_per_task=args.eval_episodes, num_steps=args.num_steps, max_steps=args.max_steps
        )
        with progress_bar(console) as progress:
            bar = progress.add_task("eval", total=len(tasks) * args.eval_episodes)
            return evaluate(
                runner, venv, tasks, ecfg, progress=lambda d, t: progress.update(bar, completed=d)
            )
    finally:
        venv.close()


def run_variant(name: str, v: Variant, tasks: list[str], run: Path, args, console) -> dict:
    import torch

    from z1.data.collect import collect
    from z1.models.pi05 import count_parameters
    from z1.train.metrics import read_metrics
    from z1.train.sft import SFTConfig, run_sft

    pc = policy_of(v)
    size = pc.vision.image_size
    demos = v.demos or args.demos
    data = run / f"data-d{demos}-{size}px"
    timings: dict[str, float] = {}
    if not data.exists():
        t0 = time.perf_counter()
        console.print(
            collect(
                tasks, demos, data, noise=0.1, seed=args.seed, image_size=(size, size), workers=args.workers
            )
        )
        timings["collect"] = time.perf_counter() - t0
    out = run / name
    if out.exists():
        import shutil

        shutil.rmtree(out)  # a re-run variant starts over (bench-owned directory)
    steps, lr = v.steps or args.steps, v.lr or args.lr
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    sft = run_sft(
        SFTConfig(
            dataset=str(data),
            out=str(out),
            policy=v.preset,
            steps=steps,
            batch_size=v.batch or args.batch,
            lr=lr,
            final_lr=lr / 10,
            augment=v.augment,
            threads=2,
            seed=args.seed,
            ckpt_every=steps,
            log_every=50,
        ),
        console,
        geometry=pc,
    )
    timings["sft"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate_checkpoint(out / "sft_ckpt", tasks, args, console)
    timings["eval"] = time.perf_counter() - t0
    metrics = read_metrics(out / "sft_metrics.jsonl")
    sps = sorted(m["samples_per_s"] for m in metrics)
    ev = result.to_json()
    return {
        "doc": v.doc,
        "policy": {"preset": v.preset, "vision": v.vision, "vlm": v.vlm, "expert": v.expert},
        "tokens_per_camera": (size // pc.vision.patch) ** 2,
        "image_size": size,
        "parameters": count_parameters(pc),
        "demos_per_task": demos,
        "sft_steps": steps,
        "batch": v.batch or args.batch,
        "lr": lr,
        "augment": v.augment,
        "timings_s": timings,
        "sft_min": timings["sft"] / 60,
        "samples_per_s": sps[len(sps) // 2] if sps else None,
        "render_ms_per_obs": render_ms(size, pc.cameras),
        "final_loss": sft["final_loss"],
        "loss_curve": [(m["step"], round(m["loss"], 4)) for m in metrics],
        "eval_env_steps": ev["env_steps"],
        "average": ev["average"],
        "tasks": {
            t: {k: r[k] for k in ("rate", "ci_low", "ci_high", "mean_length", "success_flags")}
            for t, r in ev["tasks"].items()
        },
        "checkpoint": str(out / "sft_ckpt"),
    }


def table(out: dict) -> str:
    rows = out["variants"]
    names = list(rows)
    ref = names[0] if names else None
    tasks = out["tasks"]
    short = [t.removesuffix("-v3") for t in tasks]
    lines = [
        f"# SFT benchmark: {out['task_spec']}",
        "",
        f"Eval: {out['eval_episodes_per_task']} ODE episodes per task (cap {out['eval_max_steps']} steps, "
        f"H_exec {out['h_exec']}, K {out['num_steps']}), the same seeds for every variant. Success in %, "
        "Wilson 95% interval in brackets; delta = average minus the first row's, paired by eval seed, "
        "with its 95% interval.",
        "",
        "| variant | what changes | " + " | ".join(short) + " | average | delta vs "
        f"{ref} | params | tokens/cam | SFT min | samples/s | render ms/obs |",
        "|---|---|" + "---|" * len(tasks) + "---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        cells = [
            f"{100 * r['tasks'][t]['rate']:.0f} [{100 * r['tasks'][t]['ci_low']:.0f}, "
            f"{100 * r['tasks'][t]['ci_high']:.0f}]"
            for t in tasks
        ]
        if name == ref:
            delta = "-"
        else:
            a = [f for t in tasks for f in rows[ref]["tasks"][t]["success_flags"]]
            b = [f for t in tasks for f in r["tasks"][t]["success_flags"]]
            m, lo, hi = paired_delta(a, b)
            delta = f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        lines.append(
            f"| {name} | {r['doc']} | "
            + " | ".join(cells)
            + f" | **{100 * r['average']:.1f}** | {delta} | {r['parameters'] / 1e6:.2f}M "
            f"| {r['tokens_per_camera']} | {r['sft_min']:.1f} | {r['samples_per_s']:.0f} "
            f"| {r['render_ms_per_obs']:.1f} |"
        )
    lines += [
        "",
        "Each variant: "
        + "; ".join(
            f"{n}: {r['demos_per_task']} demos/task, {r['sft_steps']} steps x {r['batch']}, lr {r['lr']:g}"
            f"{', augment' if r['augment'] else ''}"
            for n, r in rows.items()
        )
        + ".",
        f"Machine: {out['machine']}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="mw-quick", help="task set or comma-separated tasks")
    ap.add_argument("--variants", default="base,conv8", help="comma-separated variant names (see --list)")
    ap.add_argument("--list", action="store_true", help="print the variants and exit")
    ap.add_argument(
        "--demos", type=int, default=20, help="demonstrations per task (unless the variant sets it)"
    )
    ap.add_argument(
        "--steps", type=int, default=2000, help="SFT optimizer steps (unless the variant sets it)"
    )
    ap.add_argument("--batch", type=int, default=32, help="SFT batch size")
    ap.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (final = peak / 10)")
    ap.add_argument("--eval-episodes", type=int, default=50, help="evaluation episodes per task")
    ap.add_argument("--h-exec", type=int, default=4, help="actions executed per chunk at evaluation")
    ap.add_argument("--max-steps", type=int, default=160, help="evaluation episode cap (env steps)")
    ap.add_argument("--num-steps", type=int, default=5, help="denoise steps K")
    ap.add_argument("--workers", type=int, default=2, help="env worker processes")
    ap.add_argument("--seed", type=int, default=0, help="seed of collection, model init and SFT")
    ap.add_argument("--tag", default="", help="suffix of the results file (sft_<tasks><tag>.json)")
    args = ap.parse_args()
    if args.list:
        for n, v in VARIANTS.items():
            print(f"{n:<12} {v.doc}")
        return

    import json

    import torch
    from rich.console import Console

    from z1.config import lookup
    from z1.fsutil import write_json_atomic, write_text_atomic
    from z1.train.setup import resolve_tasks

    console = Console()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    chosen = {n: lookup(VARIANTS, n, "variant") for n in names}
    tasks = resolve_tasks(args.tasks)
    spec = args.tasks.replace(",", "+")
    run = Path("runs") / f"bench-sft-{spec}"
    run.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"sft_{spec}{args.tag}.json"
    settings = {
        "task_spec": args.tasks,
        "tasks": tasks,
        "eval_episodes_per_task": args.eval_episodes,
        "eval_max_steps": args.max_steps,
        "h_exec": args.h_exec,
        "num_steps": args.num_steps,
        "seed": args.seed,
    }
    out = json.loads(path.read_text()) if path.exists() else {}
    if any(out.get(k) != v for k, v in settings.items()):
        out = {}  # different settings: rows would not be comparable
    out.update(settings)
    out["machine"] = f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    out.setdefault("variants", {})
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, v in chosen.items():
        console.rule(f"variant {name}: {v.doc}")
        out["variants"][name] = run_variant(name, v, tasks, run, args, console)
        write_json_atomic(path, out)  # after every variant: a long sweep keeps what it measured
        write_text_atomic(path.with_suffix(".md"), table(out))
        console.print(table(out))


if __name__ == "__main__":
    main()
