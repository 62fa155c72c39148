"""95% intervals on success rates and on their changes.

A change in success between two evaluations at the same seeds is a difference of *paired* proportions:
episode i of both evaluations starts from the same initial state, so most of the seed-to-seed variation
cancels. Its interval is Newcombe's hybrid score interval for paired proportions (Newcombe 1998,
"Improved confidence intervals for the difference between binomial proportions based on paired data",
method 10): Wilson intervals of the two rates, combined with the observed correlation of the pairs. It
stays inside [-1, 1], is not degenerate at 0% or 100%, and shrinks to the unpaired interval (method 10
of the independent-samples paper, same year) when the correlation is 0, which is what is used when the
episodes cannot be paired (results written before z1 stored seeds, or different seeds).

An average over tasks is a sum of independent per-task estimates; its interval combines the per-task
interval half-widths in quadrature (MOVER: Zou & Donner 2008), which keeps each task's asymmetry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from z1.evaluate import wilson_interval


@dataclass(frozen=True)
class Estimate:
    """A value with a 95% interval; `paired` episodes (by seed) of `n` pairs, or unpaired."""

    value: float
    low: float
    high: float
    n: int
    paired: bool = True

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def rate_estimate(successes: int, n: int) -> Estimate:
    lo, hi = wilson_interval(successes, n)
    return Estimate(successes / n if n else 0.0, lo, hi, n)


def _halfwidths(p1: float, l1: float, u1: float, p2: float, l2: float, u2: float, phi: float):
    """Newcombe's lower/upper distances of p2 - p1 from the Wilson limits of both rates."""
    lower = (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2
    upper = (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2
    return math.sqrt(max(lower, 0.0)), math.sqrt(max(upper, 0.0))


def paired_delta(before: Sequence[bool], after: Sequence[bool]) -> Estimate:
    """after - before success rate of n paired episodes, with Newcombe's paired 95% interval."""
    n = len(before)
    if n == 0 or len(after) != n:
        raise ValueError(f"paired_delta needs two equally long, non-empty lists (got {n} and {len(after)})")
    both = sum(1 for b, a in zip(before, after) if b and a)
    lost = sum(1 for b, a in zip(before, after) if b and not a)
    won = sum(1 for b, a in zip(before, after) if a and not b)
    neither = n - both - lost - won
    k1, k2 = both + lost, both + won
    p1, p2 = k1 / n, k2 / n
    (l1, u1), (l2, u2) = wilson_interval(k1, n), wilson_interval(k2, n)
    denom = (both + lost) * (won + neither) * (both + won) * (lost + neither)
    phi = (both * neither - lost * won) / math.sqrt(denom) if denom > 0 else 0.0
    dl, du = _halfwidths(p1, l1, u1, p2, l2, u2, phi)
    d = p2 - p1
    return Estimate(d, max(-1.0, d - dl), min(1.0, d + du), n, paired=True)


def unpaired_delta(k1: int, n1: int, k2: int, n2: int) -> Estimate:
    """k2/n2 - k1/n1 of independent samples (Newcombe's hybrid score interval, no correlation)."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError(f"unpaired_delta needs episodes on both sides (got {n1} and {n2})")
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson_interval(k1, n1), wilson_interval(k2, n2)
    dl, du = _halfwidths(p1, l1, u1, p2, l2, u2, 0.0)
    d = p2 - p1
    return Estimate(d, max(-1.0, d - dl), min(1.0, d + du), min(n1, n2), paired=False)


def flags_by_seed(task_result: dict[str, Any]) -> dict[int, bool] | None:
    """seed -> success of one task of an eval JSON, or None when it lacks per-episode seeds."""
    seeds, flags = task_result.get("seeds"), task_result.get("success_flags")
    if not isinstance(seeds, list) or not isinstance(flags, list) or len(seeds) != len(flags) or not seeds:
        return None
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(
        seeds
    ):
        return None
    return {int(s): bool(f) for s, f in zip(seeds, flags)}


def task_delta(before: dict[str, Any], after: dict[str, Any]) -> Estimate:
    """Change in one task's success between two eval-JSON task entries: paired over the seeds both
    evaluated when both store seeds, otherwise from the two counts as independent samples."""
    a, b = flags_by_seed(before), flags_by_seed(after)
    if a is not None and b is not None:
        common = sorted(set(a) & set(b))
        if common:
            return paired_delta([a[s] for s in common], [b[s] for s in common])
    k1, n1 = round(float(before["rate"]) * int(before["episodes"])), int(before["episodes"])
    k2, n2 = round(float(after["rate"]) * int(after["episodes"])), int(after["episodes"])
    return unpaired_delta(k1, n1, k2, n2)


def mean_estimate(parts: Sequence[Estimate]) -> Estimate:
    """The mean of independent estimates with the MOVER interval (half-widths in quadrature / count)."""
    if not parts:
        raise ValueError("mean_estimate needs at least one estimate")
    m = len(parts)
    v = sum(p.value for p in parts) / m
    dl = math.sqrt(sum((p.value - p.low) ** 2 for p in parts)) / m
    du = math.sqrt(sum((p.high - p.value) ** 2 for p in parts)) / m
    return Estimate(v, v - dl, v + du, sum(p.n for p in parts), all(p.paired for p in parts))
