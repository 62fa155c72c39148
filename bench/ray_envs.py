"""Ray env actors against the in-process and the process vector env (Meta-World, this machine).

    MUJOCO_GL=egl .venv/bin/python bench/ray_envs.py            # ~2 min
    MUJOCO_GL=egl .venv/bin/python bench/ray_envs.py --reps 3   # quicker

Measured side by side in one run, with every vector env alive at once and the measurement blocks
interleaved (in-process, processes, Ray 1 actor, Ray 2 actors, again, ...), so load from other jobs hits
all of them alike; the table reports medians over the blocks and ratios to the in-process env:
- rollout throughput: env steps/s of `run_chunks` on a fixed set of action chunks (every slot every
  round, observation rendered at the end of each chunk, as the collector does);
- start-up: `ray.init` of a local cluster, and the hosts' start (processes, actors);
- memory: RSS of the driver, the env worker processes, the env actors and Ray's own processes (psutil);
- per-call overhead: one cheap batched call (`SlotEnvs.spec` on every host, gathered) and a bare Ray
  no-op round trip, against the cost of one env step.

Every host stays alive through the run (8 Meta-World slots each, 4 hosts): it needs about 7 GiB of free
memory, or Ray's memory monitor kills an actor. Results go to bench/results/ray_envs.json and ray_envs.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TASKS = ["push-v3", "reach-v3", "drawer-open-v3", "button-press-topdown-v3"]


def chunk_plan(slots: int, rounds: int, h: int, seed: int = 0) -> list[dict[int, np.ndarray]]:
    """The fixed action chunks: rounds x {slot: (h, 4)}."""
    rng = np.random.default_rng(seed)
    return [{s: rng.uniform(-1, 1, (h, 4)) for s in range(slots)} for _ in range(rounds)]


def throughput(venv, plan: list[dict[int, np.ndarray]]) -> float:
    """Env steps/s of one block: reset every slot, then run the planned chunks."""
    n = venv.num_slots
    venv.reset(list(range(n)), [TASKS[s % len(TASKS)] for s in range(n)], list(range(n)))
    steps = 0
    t0 = time.perf_counter()
    for chunks in plan:
        res = venv.run_chunks(chunks, stop_on_success=False, observe=True)
        steps += sum(r.steps for r in res.values())
    return steps / (time.perf_counter() - t0)


def call_seconds(fn, n: int) -> float:
    """Median seconds of `fn()` over n calls (after one warm-up call)."""
    fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def cheap_batched_call(venv) -> None:
    """One trivial command on every host, issued to all and gathered (the floor of a batched op)."""
    venv.call_workers({w: ("spec", ()) for w in range(venv.num_workers)}, "spec")


def rss_mb(pids) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=12, help="chunks per slot in one measurement block")
    ap.add_argument("--h", type=int, default=4, help="actions per chunk")
    ap.add_argument("--reps", type=int, default=5, help="measurement blocks per env host")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--calls", type=int, default=200, help="calls per overhead measurement")
    args = ap.parse_args()

    import ray

    from z1.distributed import RayVectorEnv, start_ray
    from z1.envs.vector import InProcessVectorEnv, VectorEnv

    console = Console()
    kw = {"image_size": (args.image_size, args.image_size)}
    me = psutil.Process()
    rss_driver0 = me.memory_info().rss / 2**20

    t0 = time.perf_counter()
    inproc = InProcessVectorEnv("metaworld", args.slots, env_kwargs=kw)
    t_inproc = time.perf_counter() - t0
    t0 = time.perf_counter()
    procs = VectorEnv("metaworld", args.slots, num_workers=2, env_kwargs=kw)
    t_procs = time.perf_counter() - t0
    before_ray = {p.pid for p in me.children(recursive=True)}

    info = start_ray("local", num_cpus=2, object_store_mb=256)
    t0 = time.perf_counter()
    # Half a CPU each, so both Ray envs (3 actors) stay up on this 2-CPU cluster; only one runs at a time.
    ray1 = RayVectorEnv("metaworld", args.slots, num_actors=1, env_kwargs=kw, cpus_per_actor=0.5)
    t_ray1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray2 = RayVectorEnv("metaworld", args.slots, num_actors=2, env_kwargs=kw, cpus_per_actor=0.5)
    t_ray2 = time.perf_counter() - t0

    hosts = {
        "in-process": inproc,
        "processes, 2 workers": procs,
        "Ray, 1 actor": ray1,
        "Ray, 2 actors": ray2,
    }
    plan = chunk_plan(args.slots, args.rounds, args.h)
    for venv in hosts.values():  # warm-up: first renders, lazy imports
        throughput(venv, plan[:2])
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {name: [] for name in hosts}
    for _ in range(args.reps):
        for name, venv in hosts.items():
            rates[name].append(throughput(venv, plan))
    load_after = os.getloadavg()
    med = {name: statistics.median(r) for name, r in rates.items()}

    step_s = 1.0 / med["in-process"]
    chunk_round_s = {name: args.slots * args.h / med[name] for name in hosts}
    overhead = {
        "processes, 2 workers": call_seconds(lambda: cheap_batched_call(procs), args.calls),
        "Ray, 1 actor": call_seconds(lambda: cheap_batched_call(ray1), args.calls),
        "Ray, 2 actors": call_seconds(lambda: cheap_batched_call(ray2), args.calls),
    }
    ray_noop = call_seconds(ray1.ping, args.calls)

    actor_pids = ray1.pids() + ray2.pids()
    ray_system = [
        p.pid for p in me.children(recursive=True) if p.pid not in before_ray and p.pid not in actor_pids
    ]
    memory = {
        f"driver (this process, with the {args.slots} in-process slots)": me.memory_info().rss / 2**20,
        "driver before any env": rss_driver0,
        f"env worker processes (2, {args.slots // 2} slots each)": rss_mb(procs.pids()),
        f"Ray env, 1 actor ({args.slots} slots)": rss_mb(ray1.pids()),
        f"Ray env, 2 actors ({args.slots // 2} slots each)": rss_mb(ray2.pids()),
        "Ray system processes (raylet, GCS, agents, idle workers)": rss_mb(ray_system),
    }
    ray_procs = {}
    for pid in ray_system:
        try:
            name = psutil.Process(pid).name()
        except psutil.NoSuchProcess:
            continue
        ray_procs[name] = ray_procs.get(name, 0) + 1

    for venv in hosts.values():
        venv.close()
    ray.shutdown()

    result = {
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after},
        "settings": vars(args) | {"tasks": TASKS},
        "throughput_steps_per_s": {n: {"median": med[n], "blocks": rates[n]} for n in hosts},
        "ratio_to_in_process": {n: med[n] / med["in-process"] for n in hosts},
        "startup_s": {
            "ray.init (local cluster, 2 CPUs)": info.seconds,
            "in-process slots (envs are built at the first reset)": t_inproc,
            "2 worker processes": t_procs,
            "Ray env, 1 actor": t_ray1,
            "Ray env, 2 actors": t_ray2,
        },
        "memory_rss_mb": memory,
        "ray_system_processes": ray_procs,
        "per_call": {
            "env_step_s": step_s,
            "cheap_batched_call_s": overhead,
            "ray_noop_roundtrip_s": ray_noop,
            "cheap_call_in_env_steps": {n: s / step_s for n, s in overhead.items()},
            "cheap_call_share_of_a_chunk_round": {n: s / chunk_round_s[n] for n, s in overhead.items()},
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_envs.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result, args)
    (RESULTS / "ray_envs.md").write_text(md)

    table = Table(
        title=f"Env hosts, {args.slots} slots, Meta-World {args.image_size}px (median of {args.reps})"
    )
    for col in ("host", "env steps/s", "vs in-process", "cheap batched call"):
        table.add_column(col)
    for n in hosts:
        oh = overhead.get(n)
        table.add_row(
            n,
            f"{med[n]:.0f}",
            f"{med[n] / med['in-process']:.2f}x",
            "-" if oh is None else f"{1e3 * oh:.2f} ms = {oh / step_s:.2f} env steps",
        )
    console.print(table)
    console.print(md.split("\n\n", 2)[-1])
    console.print(f"wrote {RESULTS / 'ray_envs.json'} and ray_envs.md")


def markdown(r: dict, args) -> str:
    tp, ratio = r["throughput_steps_per_s"], r["ratio_to_in_process"]
    pc = r["per_call"]
    step_s = pc["env_step_s"]
    lines = [
        "### Ray env actors vs in-process and process vector envs",
        "",
        f"{args.slots} Meta-World slots ({', '.join(TASKS)}), {args.image_size}px cameras, chunks of "
        f"{args.h} actions, {args.rounds} chunks per slot per block, median of {args.reps} interleaved "
        "blocks; "
        f"load average {r['machine']['loadavg_before'][0]:.1f} -> {r['machine']['loadavg_after'][0]:.1f} "
        f"on {r['machine']['cpus']} CPUs.",
        "",
        "| env host | env steps/s | vs in-process | cheap batched call | its share of a chunk round |",
        "|---|---|---|---|---|",
    ]
    for n in tp:
        oh = pc["cheap_batched_call_s"].get(n)
        cell = "- | -"
        if oh is not None:
            share = pc["cheap_call_share_of_a_chunk_round"][n]
            cell = f"{1e3 * oh:.2f} ms ({oh / step_s:.2f} env steps) | {100 * share:.1f}%"
        lines.append(f"| {n} | {tp[n]['median']:.0f} | {ratio[n]:.2f}x | {cell} |")
    lines += [
        "",
        f"One env step (in-process, rendering every {args.h} steps included): "
        f"{1e3 * step_s:.2f} ms. A bare Ray no-op round trip: "
        f"{1e3 * pc['ray_noop_roundtrip_s']:.2f} ms.",
        "",
        "| start-up | seconds |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["startup_s"].items()]
    lines += ["", "| memory (RSS) | MiB |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in r["memory_rss_mb"].items()]
    procs = ", ".join(f"{k} x{v}" for k, v in sorted(r["ray_system_processes"].items()))
    lines += ["", f"Ray's own processes: {procs}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
