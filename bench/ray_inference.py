"""Rollout throughput, policy inference in the learner vs in the Ray env actors (Meta-World, this machine).

    MUJOCO_GL=egl .venv/bin/python bench/ray_inference.py                    # ~6 min
    MUJOCO_GL=egl .venv/bin/python bench/ray_inference.py --policies tiny    # ~1 min

One RayVectorEnv (8 Meta-World slots on 2 actors, cameras at the policy's image size) per policy preset
(freshly initialized: the throughput does not depend on the weights, and random actions rarely succeed,
so every block runs its episodes to the cap): `tiny` (360K parameters, 64 px) and `small` (55M, 128 px).
`collect_groups` rolls out tree groups as in mw-quick (G=4: 2 trunks x 2 children, branched at half the
cap, every denoise step stochastic, K=5, prefix caches kept as for a frozen prefix) with
`--rollout.inference learner` (the learner batches the policy over all slots with 1 torch thread, as
`z1 rl --threads 1`; observations travel to the learner) and `--rollout.inference actors` (each actor
computes its own slots' chunks with a policy copy; the records travel), in interleaved blocks so that
load from other jobs hits both alike; the tables report medians. Also timed: the weight push, whole (what
a new actor gets) and delta (after an AdamW step on the action expert, as `--selective.mode expert`).

Results go to bench/results/ray_inference.json and ray_inference.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TASKS = ["button-press-topdown-v3", "drawer-open-v3", "push-v3", "pick-place-v3"]
PLACEMENTS = ("learner", "actors")


def build_runner(policy: str, spec, h_exec: int):
    """A freshly initialized policy preset with identity normalization for `spec`."""
    from z1.config import policy_preset
    from z1.models.pi05 import Pi05Policy
    from z1.models.tokenizer import make_tokenizer
    from z1.models.transforms import ObservationEncoder
    from z1.rollout.runner import PolicyRunner
    from z1.types import FeatureStats, Normalization

    def identity(d: int) -> FeatureStats:
        return FeatureStats(
            np.zeros(d, np.float32), np.ones(d, np.float32), -np.ones(d, np.float32), np.ones(d, np.float32)
        )

    torch.manual_seed(0)
    model = Pi05Policy(policy_preset(policy)).eval()
    norm = Normalization(identity(len(spec.state_names)), identity(spec.action_dim), "quantile")
    enc = ObservationEncoder(model.config, norm, make_tokenizer(model.config))
    return PolicyRunner(model, enc, norm, spec, h_exec=h_exec)


def measure(policy: str, groups_n: int, reps: int, args) -> dict:
    """Interleaved blocks of both placements on one RayVectorEnv, plus the weight pushes."""
    from z1.config import policy_preset
    from z1.distributed import RayVectorEnv
    from z1.rollout.collector import RolloutConfig, collect_groups

    size = policy_preset(policy).vision.image_size
    venv = RayVectorEnv("metaworld", args.slots, num_actors=2, env_kwargs={"image_size": (size, size)})
    base = RolloutConfig(
        group_size=4, trunks=2, branch_factor=2, branch_frac=0.5, h_exec=4, num_steps=5,
        stochastic="all", max_steps=args.max_steps,
    )  # fmt: skip
    cfgs = {p: RolloutConfig(**{**base.__dict__, "inference": p}) for p in PLACEMENTS}
    runner = build_runner(policy, venv.spec, base.h_exec)
    groups = [(TASKS[i % len(TASKS)], 100 + i) for i in range(groups_n)]

    def block(placement: str) -> dict:
        t0 = time.perf_counter()
        batch = collect_groups(
            runner, venv, groups, cfgs[placement], np.random.default_rng(0), torch.Generator().manual_seed(0)
        )
        wall = time.perf_counter() - t0
        st = batch.stats
        assert batch.caches is not None
        return {
            "env_steps_per_s": st["env_steps"] / wall,
            "wall_s": wall,
            "env_steps": st["env_steps"],
            "chunks": batch.num_chunks,
            "policy_s": st["time/policy"],
            "env_s": st["time/env"],
            "prefix_forwards": st["prefix_forwards"],
            "prefix_forwards_one_host": st["prefix_forwards_one_host"],
            "record_mb": sum(
                t.numel() * t.element_size()
                for t in (batch.inputs.images, batch.inputs.tokens, batch.chains, batch.logprobs)
                + batch.caches.keys
                + batch.caches.values
            )
            / 2**20,
        }

    # Weight pushes: the whole policy to both actors (what a new actor gets), then deltas after updates.
    t0 = time.perf_counter()
    venv.sync_policy(runner)
    whole_s = time.perf_counter() - t0
    expert = [p for n, p in runner.model.named_parameters() if ".expert." in n]
    opt = torch.optim.AdamW(expert, lr=1e-4)
    delta_s = []
    for _ in range(5):
        for p in expert:
            p.grad = torch.randn_like(p) * 1e-3
        opt.step()
        t0 = time.perf_counter()
        venv.sync_policy(runner)
        delta_s.append(time.perf_counter() - t0)

    for p in PLACEMENTS:  # warm-up: first renders, lazy imports
        block(p)
    load_before = os.getloadavg()
    blocks: dict[str, list[dict]] = {p: [] for p in PLACEMENTS}
    for _ in range(reps):
        for p in PLACEMENTS:
            blocks[p].append(block(p))
    load_after = os.getloadavg()
    venv.close()

    def med(p: str, key: str) -> float:
        return statistics.median(b[key] for b in blocks[p])

    rate = {p: med(p, "env_steps_per_s") for p in PLACEMENTS}
    return {
        "settings": {"policy": policy, "image_size": size, "groups": groups_n, "reps": reps},
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "throughput_steps_per_s": {
            p: {"median": rate[p], "blocks": [b["env_steps_per_s"] for b in blocks[p]]} for p in PLACEMENTS
        },
        "ratio_actors_to_learner": rate["actors"] / rate["learner"],
        "per_block_median": {
            p: {k: med(p, k) for k in blocks[p][0] if k != "env_steps_per_s"} for p in PLACEMENTS
        },
        "weight_push_s": {
            "whole_policy_to_2_actors": whole_s,
            "delta_expert_to_2_actors_median": statistics.median(delta_s),
            "params_total": sum(p.numel() for p in runner.model.parameters()),
            "params_expert": sum(p.numel() for p in expert),
        },
    }


DEFAULTS = {"tiny": (4, 5), "small": (2, 3)}  # policy -> (groups per block, blocks per placement)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", nargs="+", default=["tiny", "small"], choices=sorted(DEFAULTS))
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--groups", type=int, default=None, help="groups per block (default: 4 tiny, 2 small)")
    ap.add_argument("--max-steps", type=int, default=40, help="episode cap in env steps")
    ap.add_argument("--reps", type=int, default=None, help="blocks per placement (default: 5 tiny, 3 small)")
    args = ap.parse_args()

    import ray

    from z1.distributed import start_ray

    torch.set_num_threads(1)
    console = Console()
    info = start_ray("local", num_cpus=2, object_store_mb=512)
    runs = {}
    for policy in args.policies:
        groups_n, reps = DEFAULTS[policy]
        runs[policy] = measure(policy, args.groups or groups_n, args.reps or reps, args)
    ray.shutdown()
    result = {
        "machine": {"cpus": os.cpu_count()},
        "settings": {k: v for k, v in vars(args).items() if k != "policies"} | {"tasks": TASKS},
        "ray_init_s": info.seconds,
        "policies": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_inference.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result, args)
    (RESULTS / "ray_inference.md").write_text(md)

    table = Table(title=f"Rollouts, {args.slots} Meta-World slots on 2 Ray actors (medians)")
    for col in ("policy", "inference", "env steps/s", "vs learner", "policy s", "env s", "prefix forwards"):
        table.add_column(col)
    for policy, r in runs.items():
        for p in PLACEMENTS:
            b, rate = r["per_block_median"][p], r["throughput_steps_per_s"]
            table.add_row(
                policy,
                p,
                f"{rate[p]['median']:.1f}",
                f"{rate[p]['median'] / rate['learner']['median']:.2f}x",
                f"{b['policy_s']:.2f}",
                f"{b['env_s']:.2f}",
                f"{b['prefix_forwards']:.0f} (one host: {b['prefix_forwards_one_host']:.0f})",
            )
    console.print(table)
    console.print(f"wrote {RESULTS / 'ray_inference.json'} and ray_inference.md")


def markdown(r: dict, args) -> str:
    lines = [
        "### Policy inference in the learner vs in the Ray env actors",
        "",
        f"{args.slots} Meta-World slots ({', '.join(TASKS)}) on 2 Ray actors, freshly initialized policies, "
        "tree groups (G=4: 2 trunks x 2 children branched at half the cap, K=5, all steps stochastic, cap "
        f"{args.max_steps} env steps), interleaved blocks, medians; prefix caches kept (frozen prefix). The "
        "learner uses 1 torch thread (`z1 rl --threads 1`), each actor 1.",
        "",
        "| policy | inference | env steps/s | vs learner | policy s | env s (incl. transfer) | prefix "
        "forwards (one-host dedupe) | records MiB | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for policy, run in r["policies"].items():
        tp, blk = run["throughput_steps_per_s"], run["per_block_median"]
        st = run["settings"]
        load = f"{run['loadavg_before'][0]:.1f} -> {run['loadavg_after'][0]:.1f}"
        for p in PLACEMENTS:
            b = blk[p]
            lines.append(
                f"| {policy} ({st['image_size']}px, {st['groups']} groups, {st['reps']} blocks) | {p} | "
                f"{tp[p]['median']:.1f} | {tp[p]['median'] / tp['learner']['median']:.2f}x | "
                f"{b['policy_s']:.2f} | {b['env_s']:.2f} | {b['prefix_forwards']:.0f} "
                f"({b['prefix_forwards_one_host']:.0f}) | {b['record_mb']:.1f} | {load} |"
            )
    lines += [
        "",
        "With inference in the actors, `policy s` is the slowest actor's inference time per chunk round, "
        "summed; `env s` the rest of the rounds (stepping, transfer of the records, merging).",
        "",
        "| policy | parameters | whole policy to 2 actors | after an AdamW step on the expert (delta) |",
        "|---|---|---|---|",
    ]
    for policy, run in r["policies"].items():
        push = run["weight_push_s"]
        lines.append(
            f"| {policy} | {push['params_total']:,} ({push['params_expert']:,} in the expert) | "
            f"{1e3 * push['whole_policy_to_2_actors']:.0f} ms | "
            f"{1e3 * push['delta_expert_to_2_actors_median']:.0f} ms |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
