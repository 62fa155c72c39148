"""Env throughput, restore cost, vector scaling and scripted-expert reliability (Meta-World).

    MUJOCO_GL=egl .venv/bin/python bench/envs.py             # throughput, restore, vector (~2 min)
    MUJOCO_GL=egl .venv/bin/python bench/envs.py --experts   # experts on all MT50 tasks, 20 seeds

Results go to bench/results/envs.json (and envs_experts.json). The machine has 2 cores shared with other
engineers: absolute numbers move with their load; the side-by-side ratios are measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TASK = "push-v3"


def raw_metaworld(steps: int, every: int) -> float:
    """Plain metaworld step() + a mujoco.Renderer (2 cameras, shadows/reflections off) every `every` steps."""
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers the Meta-World gym ids)
    import mujoco

    env = gym.make("Meta-World/goal_observable", env_name=TASK, seed=0).unwrapped
    env.reset()
    r = mujoco.Renderer(env.model, 64, 64)
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (steps, 4))

    def render() -> None:
        for cam in ("corner", "gripperPOV"):
            r.update_scene(env.data, cam)
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            r.render()

    t0 = time.perf_counter()
    for i in range(steps):
        env.step(acts[i])
        if (i + 1) % every == 0:
            render()
    dt = time.perf_counter() - t0
    r.close()
    env.close()
    return steps / dt


def ours(steps: int, every: int) -> float:
    from z1.envs.base import run_chunk
    from z1.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv()
    env.reset(TASK, 0)
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (steps // every, every, 4))  # (chunks, h, d)
    t0 = time.perf_counter()
    for chunk in acts:
        run_chunk(env, chunk, stop_on_success=False, observe=True)
    dt = time.perf_counter() - t0
    env.close()
    return steps / dt


def restore_cost(n: int = 300) -> dict[str, float]:
    from z1.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv(render=False)
    env.reset(TASK, 0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        env.step(rng.uniform(-1, 1, 4))
    acts = rng.uniform(-1, 1, (n, 4))
    snap = env.snapshot()
    t0 = time.perf_counter()
    for i in range(n):
        env.restore(snap)
        env.step(acts[i])
    both = (time.perf_counter() - t0) / n
    env.restore(snap)
    t0 = time.perf_counter()
    for i in range(min(n, 400)):
        env.step(acts[i])
    step = (time.perf_counter() - t0) / min(n, 400)
    t0 = time.perf_counter()
    for _ in range(n):
        env.snapshot()
    snap_t = (time.perf_counter() - t0) / n
    env.close()
    restore = both - step
    return {
        "step_ms": step * 1e3,
        "restore_ms": restore * 1e3,
        "snapshot_ms": snap_t * 1e3,
        "restore_in_steps": restore / step,
    }


def vector_rate(workers: int, slots: int = 2, chunks: int = 20, h: int = 5) -> float:
    from z1.envs.vector import VectorEnv

    with VectorEnv("metaworld", num_slots=slots, num_workers=workers) as v:
        v.reset(list(range(slots)), [TASK] * slots, list(range(slots)))
        rng = np.random.default_rng(0)
        v.run_chunks({s: rng.uniform(-1, 1, (h, 4)) for s in range(slots)}, stop_on_success=False)  # warm-up
        t0 = time.perf_counter()
        for _ in range(chunks):
            v.run_chunks({s: rng.uniform(-1, 1, (h, 4)) for s in range(slots)}, stop_on_success=False)
        dt = time.perf_counter() - t0
    return slots * chunks * h / dt


def throughput(console: Console) -> dict:
    steps = 300
    res = {
        "task": TASK,
        "raw_render_every_step": raw_metaworld(steps, 1),
        "raw_render_every_5": raw_metaworld(steps, 5),
        "ours_observe_every_5": ours(steps, 5),
    }
    res["overhead_vs_raw_every_5"] = res["raw_render_every_5"] / res["ours_observe_every_5"] - 1.0
    res["restore"] = restore_cost()
    r1 = vector_rate(1)
    r2 = vector_rate(2)
    res["vector"] = {
        "slots": 2,
        "chunk": 5,
        "1_worker_steps_s": r1,
        "2_workers_steps_s": r2,
        "speedup": r2 / r1,
    }
    res["load_average"] = os.getloadavg()
    res["note"] = "2 shared cores; other engineers' jobs run concurrently, see load_average"
    t = Table(title="Meta-World env benchmark (64x64, 2 cameras)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("raw step+render every step (steps/s)", f"{res['raw_render_every_step']:.1f}")
    t.add_row("raw step, render every 5 (steps/s)", f"{res['raw_render_every_5']:.1f}")
    t.add_row("z1 MetaWorldEnv, observe every 5 (steps/s)", f"{res['ours_observe_every_5']:.1f}")
    t.add_row("overhead vs raw every 5", f"{100 * res['overhead_vs_raw_every_5']:+.1f}%")
    rc = res["restore"]
    t.add_row("env step without render (ms)", f"{rc['step_ms']:.3f}")
    t.add_row("restore (ms) / in env steps", f"{rc['restore_ms']:.3f} / {rc['restore_in_steps']:.2f}")
    t.add_row("snapshot (ms)", f"{rc['snapshot_ms']:.3f}")
    vr = res["vector"]
    t.add_row("vector 2 slots, 1 worker (steps/s)", f"{vr['1_worker_steps_s']:.1f}")
    t.add_row("vector 2 slots, 2 workers (steps/s)", f"{vr['2_workers_steps_s']:.1f}")
    t.add_row("vector speed-up 1 -> 2 workers", f"{vr['speedup']:.2f}x")
    t.add_row("load average (1, 5, 15 min)", ", ".join(f"{x:.2f}" for x in res["load_average"]))
    console.print(t)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", action="store_true", help="expert success on all MT50 tasks instead")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--noise", type=float, default=0.1)
    args = ap.parse_args()
    console = Console()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.experts:
        from z1.envs.commands import check_experts
        from z1.envs.metaworld import MT50_TASKS

        t0 = time.perf_counter()
        res = check_experts(
            "metaworld", list(MT50_TASKS), list(range(args.seeds)), args.noise, console=console
        )
        res["seconds"] = time.perf_counter() - t0
        below = {k: v["success_rate"] for k, v in res["tasks"].items() if v["success_rate"] < 0.9}
        res["below_90"] = below
        console.print(f"tasks below 90%: {below or 'none'}  ({res['seconds']:.0f} s)")
        (RESULTS / "envs_experts.json").write_text(json.dumps(res, indent=2))
    else:
        res = throughput(console)
        (RESULTS / "envs.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
