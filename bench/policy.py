"""Policy speed benchmark on CPU: prefix, denoise step, chunk, shared-prefix groups, GFLOP/s, training rate.

    .venv/bin/python bench/policy.py [--presets tiny small] [--threads 2] [--quick]

Other engineers share the CPU, so every block also times a plain torch.matmul in the same run; the ratios
(achieved / matmul GFLOP/s) are the stable numbers. Writes bench/results/policy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from z1.config import PolicyConfig, SamplerConfig, policy_preset
from z1.models.pi05 import Pi05Policy, PolicyInputs, count_parameters
from z1.models.sampling import sample_chunk

K_STEPS = 10
SFT_BATCHES = {"tiny": (32, 64), "small": (8,)}


def timeit(fn: Callable[[], object], min_time: float = 0.5, max_reps: int = 20) -> float:
    """Median seconds per call after one warm-up call; at least 2 reps unless one call exceeds min_time."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > min_time and len(times) >= (1 if times[0] > min_time else 2):
            break
    return statistics.median(times)


def matmul_gflops(m: int, k: int, n: int) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    dt = timeit(lambda: a @ b, min_time=0.3)
    return 2 * m * k * n / dt / 1e9


def make_inputs(cfg: PolicyConfig, b: int, seed: int = 0) -> PolicyInputs:
    g = torch.Generator().manual_seed(seed)
    n, s, l = len(cfg.cameras), cfg.vision.image_size, cfg.max_token_len
    return PolicyInputs(
        images=torch.rand(b, n, 3, s, s, generator=g) * 2 - 1,
        image_mask=torch.ones(b, n, dtype=torch.bool),
        tokens=torch.randint(0, cfg.vocab_size, (b, l), generator=g),
        token_mask=torch.ones(b, l, dtype=torch.bool),
    )


def flops(cfg: PolicyConfig) -> dict[str, float]:
    """Matmul FLOPs per sample (2 x MACs; norms, softmax, RoPE ignored): prefix and one denoise step."""
    vc, v, e = cfg.vision, cfg.vlm, cfg.expert
    t = (vc.image_size // vc.patch) ** 2
    n = len(cfg.cameras)
    vis = t * 3 * vc.patch**2 * vc.width + vc.depth * (t * (4 * vc.width**2 + 2 * vc.width * vc.mlp_dim))
    vis += vc.depth * 2 * t * t * vc.width + t * vc.width * v.width
    p = n * t + cfg.max_token_len
    qd, kvd = v.num_heads * v.head_dim, v.num_kv_heads * v.head_dim

    def layer(w: int, m: int, s: int, keys: int) -> float:
        return s * (w * qd + 2 * w * kvd + qd * w + 3 * w * m) + 2 * s * keys * qd

    vlm = (v.depth - 1) * layer(v.width, v.mlp_dim, p, p) + p * 2 * v.width * kvd
    h = cfg.action_horizon
    step = v.depth * (layer(e.width, e.mlp_dim, h, p + h) + 2 * e.width * 3 * e.width) + 2 * e.width**2
    step += 3 * e.width**2 + 2 * h * cfg.action_dim * e.width
    return {"prefix": 2.0 * (n * vis + vlm), "step": 2.0 * step}


def bench_preset(name: str, batches: tuple[int, ...], quick: bool) -> dict:
    cfg = policy_preset(name)
    torch.manual_seed(0)
    model = Pi05Policy(cfg).eval()
    f = flops(cfg)
    h, a = cfg.action_horizon, cfg.action_dim
    ode = SamplerConfig(mode="ode", num_steps=K_STEPS)
    out: dict = {"params": count_parameters(cfg), "flops_per_sample": f, "infer": {}, "train": {}}
    tok = len(cfg.cameras) * (cfg.vision.image_size // cfg.vision.patch) ** 2 + cfg.max_token_len
    out["prefix_tokens"] = tok
    for b in batches:
        inputs = make_inputs(cfg, b)
        noise = torch.randn(b, h, a)
        t = torch.full((b,), 0.5)
        with torch.no_grad():
            cache = model.build_prefix_cache(inputs)
            prefix_s = timeit(lambda inputs=inputs: model.build_prefix_cache(inputs))
            step_s = timeit(lambda cache=cache, noise=noise, t=t: model.velocity(cache, noise, t))
            chunk_s = timeit(
                lambda inputs=inputs, noise=noise: sample_chunk(
                    model, model.build_prefix_cache(inputs), noise, ode
                )
            )
            mm = matmul_gflops(b * tok, cfg.vlm.width, cfg.vlm.mlp_dim)
        chunk_gflops = b * (f["prefix"] + K_STEPS * f["step"]) / chunk_s / 1e9
        out["infer"][b] = {
            "prefix_ms": 1e3 * prefix_s,
            "step_ms": 1e3 * step_s,
            "chunk_ms": 1e3 * chunk_s,
            "chunk_gflops": chunk_gflops,
            "matmul_gflops": mm,
            "efficiency": chunk_gflops / mm,
        }
    # G chunks sharing one prefix vs one chunk
    one = make_inputs(cfg, 1)
    with torch.no_grad():
        single = timeit(lambda: sample_chunk(model, model.build_prefix_cache(one), torch.randn(1, h, a), ode))
        group = timeit(
            lambda: sample_chunk(model, model.build_prefix_cache(one).expand(8), torch.randn(8, h, a), ode)
        )
    out["shared_prefix"] = {
        "g": 8,
        "one_chunk_ms": 1e3 * single,
        "g_chunks_ms": 1e3 * group,
        "ratio": group / single,
    }
    # training: forward + backward + AdamW
    for b in SFT_BATCHES.get(name, (8,)):
        for dtype in ("fp32", "bf16"):
            torch.manual_seed(0)
            m = Pi05Policy(cfg).train()
            opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95))
            inputs = make_inputs(cfg, b)
            actions = torch.randn(b, h, a)
            mask = torch.ones_like(actions)

            def step(m=m, opt=opt, inputs=inputs, actions=actions, mask=mask, bf=dtype == "bf16") -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf):
                    loss = m.compute_loss(inputs, actions, mask)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            dt = timeit(step, min_time=0.5 if quick else 2.0)
            mm = matmul_gflops(b * tok, cfg.vlm.width, cfg.vlm.mlp_dim)
            train_gflops = b * 3 * (f["prefix"] + f["step"]) / dt / 1e9
            out["train"][f"{dtype}_b{b}"] = {
                "samples_per_s": b / dt,
                "step_ms": 1e3 * dt,
                "gflops": train_gflops,
                "matmul_gflops": mm,
                "efficiency": train_gflops / mm,
            }
    return out


def print_tables(results: dict) -> None:
    for name, r in results["presets"].items():
        fl = r["flops_per_sample"]
        print(
            f"\n== {name}: {r['params']:,} params, prefix {r['prefix_tokens']} tokens, "
            f"{fl['prefix'] / 1e6:.1f} MFLOP prefix, {fl['step'] / 1e6:.2f} MFLOP/step (per sample)"
        )
        cols = ("prefix ms", "step ms", "chunk ms", "GFLOP/s", "matmul", "eff")
        print(f"{'batch':>6} " + " ".join(f"{c:>9}" for c in cols))
        for b, x in r["infer"].items():
            vals = (x["prefix_ms"], x["step_ms"], x["chunk_ms"], x["chunk_gflops"], x["matmul_gflops"])
            print(f"{b:>6} " + " ".join(f"{v:>9.2f}" for v in vals) + f" {x['efficiency']:>9.1%}")
        s = r["shared_prefix"]
        print(
            f"shared prefix: 1 chunk {s['one_chunk_ms']:.2f} ms, G={s['g']} chunks "
            f"{s['g_chunks_ms']:.2f} ms, "
            f"ratio {s['ratio']:.2f}x (target <= 1.5x)"
        )
        cols = ("samples/s", "step ms", "GFLOP/s", "matmul", "eff")
        print(f"{'train':>10} " + " ".join(f"{c:>9}" for c in cols))
        for k, x in r["train"].items():
            vals = (x["samples_per_s"], x["step_ms"], x["gflops"], x["matmul_gflops"])
            print(f"{k:>10} " + " ".join(f"{v:>9.1f}" for v in vals) + f" {x['efficiency']:>9.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="shorter timing windows")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "policy.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "load_avg_start": os.getloadavg(),
        "torch": torch.__version__,
        "presets": {},
    }
    for name in args.presets:
        results["presets"][name] = bench_preset(name, tuple(args.batches), args.quick)
    results["load_avg_end"] = os.getloadavg()
    print_tables(results)
    print(f"\nload average start {results['load_avg_start']}, end {results['load_avg_end']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
