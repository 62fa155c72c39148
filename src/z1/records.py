"""The records one GRPO iteration passes along: the collector's chunk batch and the scorer's scored batch.

    collect_groups (rollout/collector.py) -> RolloutBatch -> score_batch (rl/scoring.py) -> ScoredBatch
        -> Learner.update (rl/learner.py)

They sit at the types layer so that every layer can name them: this module imports nothing of z1 at run
time beyond the sampler config; the classes its fields hold (policy inputs and prefix caches of
models/pi05.py, trees of rollout/tree.py, task statistics of rl/reward.py) are named for type checking only.

Shape letters as in z1.types, plus, for batch records:
    n  chunks (rows) of a rollout batch      u  distinct observations (prefix forwards) of a batch
    q  groups of a batch                     g  leaves of one group
    e  tree edges of the kept groups         j  stochastic denoise steps per chunk
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from z1.config import SamplerConfig

if TYPE_CHECKING:
    from z1.models.pi05 import PolicyInputs, PrefixCache
    from z1.rl.reward import TaskTimeStats
    from z1.rollout.tree import Tree


@dataclass
class GroupRollout:
    """One group as the collector built it: the (task, seed) it started from and its tree of episodes.

    Mutable while the collector grows it (and the distributed wave collector renumbers `tree.group` to
    the plan index); scoring never writes to it (`ScoredBatch.trees` holds the scored copies)."""

    task: str
    seed: int
    tree: Tree
    levels: tuple[int, ...]  # branch levels drawn for the group
    success_time: dict[int, int] = field(default_factory=dict)  # leaf node -> env steps to first success
    length: dict[int, int] = field(default_factory=dict)  # leaf node -> episode length in env steps

    def leaf_outcomes(self) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Leaves in tree order with success flags (g,) and success times (g,) (0 for failures)."""
        leaves = self.tree.leaves()
        succ = np.array([self.tree.node(i).success for i in leaves], dtype=bool)
        times = np.array([self.success_time.get(i, 0) for i in leaves], dtype=np.float64)
        return leaves, succ, times


@dataclass(frozen=True)
class RolloutBatch:
    """Everything the GRPO update needs from one collection round: per chunk, which observation it saw,
    its whole denoise chain, its stochastic steps and their log-probs, and the tree edge it belongs to.

    `sampler` is the Flow-SDE sampler that drew the chains; the update recomputes the log-probs with
    this one, so a ratio never compares densities of two different samplers."""

    groups: list[GroupRollout]  # (q,)
    inputs: PolicyInputs  # (u, ...) every distinct observation seen, encoded
    caches: PrefixCache | None  # (u, ...) their prefix caches (kept when the prefix is frozen in training)
    obs_index: torch.Tensor  # (n,) int64 chunk -> observation row
    chains: torch.Tensor  # (n, k+1, h, a) x^(0..K) of each chunk
    step_ids: torch.Tensor  # (n, j) int64 stochastic step indices
    logprobs: torch.Tensor  # (n, j) float32 rollout log-probs of those steps
    chunk_group: np.ndarray  # (n,) int group index into `groups`
    chunk_node: np.ndarray  # (n,) int tree node id (edge) of the chunk
    sampler: SamplerConfig
    stats: dict[str, float]  # env steps, prefix forwards, clones, restarts, wall times

    @property
    def num_chunks(self) -> int:
        return int(self.obs_index.shape[0])


@dataclass(frozen=True)
class ChunkSummary:
    """Per-chunk and per-edge numbers of one scored batch, from which the chunk statistics are computed
    (`rl.scoring.chunk_stats`); the summaries of data-parallel ranks concatenate into the whole batch's."""

    adv: np.ndarray  # (n,) float64 per chunk
    train: np.ndarray  # (n,) bool per chunk
    edge_train: np.ndarray  # (e,) bool per tree edge of the kept groups
    edge_loc_zero: np.ndarray  # (e,) bool: |A_loc| ~ 0
    edge_depth: np.ndarray  # (e,) int64
    edge_abs_adv: np.ndarray  # (e,) float64 |A(e)|


@dataclass(frozen=True)
class ScoredBatch:
    """A rollout batch with what scoring (`rl.scoring.score_batch`) made of it: what the learner consumes.

    Scoring is pure, so everything it derived lives here: the trees with their calibrated leaf returns
    (copies; `rollout.groups` keep unscored trees) and the task statistics with this batch folded in,
    which the trainer carries to the next iteration."""

    rollout: RolloutBatch
    advantages: np.ndarray  # (n,) float64 per chunk
    weights: np.ndarray  # (n,) float64 per chunk: the edge's sampling mass rho
    trainable: np.ndarray  # (n,) bool
    returns: list[np.ndarray]  # (q,) x (g,) calibrated leaf returns per group of the batch
    kept: np.ndarray  # (q,) bool, survived the range filter
    sigma: float  # the reward scale (pooled, or the mean of the kept groups' scales)
    stats: dict[str, float]
    """Group statistics of the whole plan; chunk statistics (`chunk_stats`) of this batch's chunks."""
    chunks: ChunkSummary
    trees: list[Tree]  # (q,) the batch's trees with leaf returns set
    task_stats: TaskTimeStats  # the statistics before this batch, with its outcomes folded in
