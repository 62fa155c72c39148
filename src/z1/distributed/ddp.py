"""Data-parallel learner over torch.distributed (launched with `torchrun`): gloo on CPU, NCCL on GPUs.

Every rank holds the whole model and takes its share of each global batch (`shard`). After
`loss.backward()`, `allreduce_grads(params, weight)` replaces every rank's gradient by the
`weight`-weighted mean over ranks. With `weight` = the rank's number of loss terms (tokens, action
entries, GRPO term weight) and a loss that is the mean over the rank's own terms, that is exactly the
gradient of the global mean over all ranks' terms, i.e. the single-process gradient for the same global
batch (a mean of per-rank means would weight a rank with few terms like one with many). The same call
reduces scalar statistics so every rank logs, and decides early stops, on global numbers.

One process without torchrun is a `DistContext` of world size 1, whose calls are no-ops; `current()` is
the context of this process (what `init_from_env` set up), so library code calls `allreduce_grads` and
`is_main` without passing a context around.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    """"gloo" or "nccl" once the process group is initialized; None for a single process."""
    device: str = "cpu"
    """Device the collectives run on (NCCL needs CUDA tensors; z1's CPU path uses "cpu")."""

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, logs and evaluations."""
        return self.rank == 0

    # ------------------------------------------------------------------ set-up

    @classmethod
    def init_from_env(cls, backend: str | None = None, timeout_minutes: float = 120.0) -> DistContext:
        """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT);
        a single-process context when those are absent or WORLD_SIZE is 1.

        `backend` defaults to NCCL when CUDA is available, else gloo. The timeout is long because rank 0
        alone runs periodic evaluations while the others wait in the next collective.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return _install(cls())
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise RuntimeError(
                f"WORLD_SIZE={world} but {', '.join(missing)} unset: launch with `torchrun "
                "--nproc-per-node N -m z1.cli ...` (it sets RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)"
            )
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo' (CPU) or 'nccl' (CUDA), got {backend!r}")
        device = "cpu"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
            device = f"cuda:{local_rank}"
        if not dist.is_initialized():
            dist.init_process_group(
                backend,
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(minutes=timeout_minutes),
            )
        return _install(cls(rank, world, local_rank, backend, device))

    def close(self) -> None:
        """Leave the process group (the context of this process becomes single-process again)."""
        if self.is_distributed and dist.is_initialized():
            dist.destroy_process_group()
        _install(DistContext())

    # ------------------------------------------------------------------ data

    def shard_bounds(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's contiguous part of n items; sizes differ by at most one."""
        base, extra = divmod(n, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def shard(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's part of a list, tensor or array: a contiguous slice; each item on exactly one rank."""
        lo, hi = self.shard_bounds(len(items))
        return items[lo:hi]

    # ------------------------------------------------------------------ collectives

    def broadcast_params(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (identical starting weights)."""
        if not self.is_distributed:
            return
        with torch.no_grad():
            for t in module.state_dict().values():
                buf = t.to(self.device)
                dist.broadcast(buf, src=0)
                if buf is not t:
                    t.copy_(buf)

    def allreduce_grads(
        self,
        params: Iterable[torch.nn.Parameter],
        weight: float | torch.Tensor | None = None,
        stats: dict[str, float] | None = None,
    ) -> dict[str, float] | None:
        """Replace the gradients of `params` (those requiring grad) by their `weight`-weighted mean over
        ranks (plain mean when `weight` is None), in one all-reduce. A parameter without a gradient on
        a rank counts as zero there; one without a gradient on every rank keeps `grad = None` (so the
        optimizer skips it, as it would in one process).

        `stats` (scalars) come back reduced over ranks as well: keys ending in "min" / "max" by min /
        max, keys under "terms/" summed, all others as the same weighted mean (exact for statistics that
        are weighted means over the rank's terms). Returns the reduced stats (or None).
        """
        if not self.is_distributed:
            return stats
        w = 1.0 if weight is None else float(weight)
        plist = [p for p in params if p.requires_grad]
        keys = list(stats or {})
        mean_keys = [k for k in keys if not _is_extreme(k) and not k.startswith("terms/")]
        sum_keys = [k for k in keys if k.startswith("terms/")]
        ext_keys = [k for k in keys if _is_extreme(k)]
        grads = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() * w for p in plist
        ]
        has_grad = [0.0 if p.grad is None else 1.0 for p in plist]
        scal = torch.tensor(
            [w, *has_grad]
            + [float(stats[k]) * w for k in mean_keys]  # type: ignore[index]
            + [float(stats[k]) for k in sum_keys],  # type: ignore[index]
            dtype=torch.float32,
        )
        flat = torch.cat([*grads, scal]).to(self.device)  # (sum of numels + 1 + params + stats,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.cpu() if self.device != "cpu" else flat
        n_grad = sum(g.numel() for g in grads)
        total_w = float(flat[n_grad])
        if total_w <= 0:
            raise ValueError(f"allreduce_grads: the weights sum to {total_w} over ranks; need > 0")
        seen = flat[n_grad + 1 : n_grad + 1 + len(plist)].tolist()
        off = 0
        for p, any_grad in zip(plist, seen):
            n = p.numel()
            if any_grad > 0:
                g = (flat[off : off + n] / total_w).reshape(p.shape).to(p.dtype)
                if p.grad is None:
                    p.grad = g.to(p.device)
                else:
                    p.grad.copy_(g)
            off += n
        if stats is None:
            return None
        red = dict(stats)
        tail = flat[n_grad + 1 + len(plist) :].tolist()
        for k, v in zip(mean_keys, tail[: len(mean_keys)]):
            red[k] = v / total_w
        for k, v in zip(sum_keys, tail[len(mean_keys) :]):
            red[k] = v
        if ext_keys:
            # one MAX all-reduce: max of the max-stats and of the negated min-stats
            signs = torch.tensor([-1.0 if k.endswith("min") else 1.0 for k in ext_keys], dtype=torch.float64)
            ext = torch.tensor([float(stats[k]) for k in ext_keys], dtype=torch.float64) * signs
            ext = ext.to(self.device)
            dist.all_reduce(ext, op=dist.ReduceOp.MAX)
            for k, v in zip(ext_keys, (ext.cpu() * signs).tolist()):
                red[k] = v
        return red

    def allreduce_mean(self, values: dict[str, float], weight: float = 1.0) -> dict[str, float]:
        """Weighted mean of scalars over ranks (for logging)."""
        if not self.is_distributed:
            return dict(values)
        keys = list(values)
        buf = torch.tensor([weight] + [float(values[k]) * weight for k in keys], dtype=torch.float64)
        buf = buf.to(self.device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        buf = buf.cpu()
        return {k: float(buf[i + 1] / buf[0]) for i, k in enumerate(keys)}

    def all_gather_object(self, obj: T) -> list[T]:
        """Every rank's `obj` (picklable), in rank order, on every rank; `[obj]` in one process. For
        small per-rank records (group outcomes, counters), not for tensors of any size."""
        if not self.is_distributed:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def any_true(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank: one decision (an early stop, a time budget)
        that all ranks take together, so they keep calling the same collectives."""
        if not self.is_distributed:
            return bool(flag)
        buf = torch.tensor([1.0 if flag else 0.0], dtype=torch.float32, device=self.device)
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
        return bool(buf.item() > 0)

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()


def _is_extreme(key: str) -> bool:
    return key.endswith(("min", "max"))


_CURRENT = DistContext()


def _install(ctx: DistContext) -> DistContext:
    global _CURRENT
    _CURRENT = ctx
    return ctx


def current() -> DistContext:
    """The data-parallel context of this process (world size 1 unless `init_from_env` joined a group)."""
    return _CURRENT


def allreduce_grads(
    params: Iterable[torch.nn.Parameter],
    weight: float | torch.Tensor | None = None,
    stats: dict[str, float] | None = None,
) -> dict[str, float] | None:
    """`current().allreduce_grads(...)`: the one call a training step makes between `loss.backward()`
    and clipping/stepping; a no-op returning `stats` unchanged in a single process."""
    return _CURRENT.allreduce_grads(params, weight, stats)
