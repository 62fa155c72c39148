"""Shared-prefix rollout trees for task-wise GRPO. Pure data and numpy, no env or model.

The math is docs/algorithm.md#trees; anchors such as `#env-step-savings` below name its sections.

A group is one `Tree`. Node 0 is the virtual root: the group's initial simulator state. Its children are
the M trunks. Every other node `m` is the state at the end of the edge (parent -> m): the chunks executed
from the parent's branch point until the next branch point (where m gets children) or until the episode
ends (m is a leaf). Flat GRPO is the same structure with M = G trunks and no branching.

The collector builds a tree incrementally while it steps env slots:

    tree = Tree(task="reach", group=3)
    a, b = tree.add_trunk(), tree.add_trunk()
    tree.extend(a, env_steps=10)              # one executed chunk on edge (root -> a)
    kids = tree.branch(a, 4)                   # a becomes a branch node; the slot continues as kids[0]
    tree.finish(kids[0], success=True)        # leaf; its success time is `tree.path_env_steps(kids[0])`
    ...
    tree.set_leaf_return(leaf, R)              # calibrated return (rl/reward.py)

Then `node_values`, `edge_advantages`, `edge_weights` and `trainable_edges` (rollout/tree_advantages.py)
give one number per node id, i.e. per edge (the root entry is unused and 0). Arrays are indexed by node id
(ids are 0..n-1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ROOT = 0


class TreeError(ValueError):
    """An invalid tree operation (extending a done node, branching twice, a leaf without a return, ...)."""


@dataclass(frozen=True)
class TreeConfig:
    """Tree shape (docs/algorithm.md#tree-shape-and-branching; defaults: #defaults).

    trunks: M independent rollouts from the group's initial state.
    branch_levels: fixed branch chunk indices b_1 < ... < b_L; `None` means "draw them" (see
        `branch_random`); `()` means no branching (flat GRPO).
    branch_random: when `branch_levels` is None, draw one level b_1 ~ U{1..floor(max_branch_frac*C_med)}
        per group (the default, #tree-shape-and-branching); when False and `branch_levels` is None, no
        branching.
    branch_factor: k children per branch node; an int for all levels or one value per level.
    min_budget_chunks: never branch a node with fewer chunks of budget left.
    max_branch_frac: the 0.5 in b_1 <= 0.5 * C_med.
    """

    trunks: int = 2
    branch_levels: tuple[int, ...] | None = None
    branch_random: bool = True
    branch_factor: int | tuple[int, ...] = 4
    min_budget_chunks: int = 2
    max_branch_frac: float = 0.5

    def __post_init__(self) -> None:
        if self.trunks < 1:
            raise TreeError(f"TreeConfig.trunks must be >= 1, got {self.trunks}")
        if self.branch_levels is not None:
            lv = self.branch_levels
            if any(b < 1 for b in lv) or any(b2 <= b1 for b1, b2 in zip(lv, lv[1:])):
                raise TreeError(
                    f"TreeConfig.branch_levels must be strictly increasing chunk indices >= 1, got {lv}"
                )
        ks = self.branch_factor if isinstance(self.branch_factor, tuple) else (self.branch_factor,)
        if any(k < 2 for k in ks):
            raise TreeError(
                f"TreeConfig.branch_factor must be >= 2 (use branch_levels=() for no branching), got {ks}"
            )
        if not 0.0 < self.max_branch_frac <= 1.0:
            raise TreeError(f"TreeConfig.max_branch_frac must be in (0, 1], got {self.max_branch_frac}")

    @staticmethod
    def flat(group_size: int) -> TreeConfig:
        """Flat GRPO: G independent trunks, no branching."""
        return TreeConfig(trunks=group_size, branch_levels=(), branch_random=False)

    def factor(self, level: int) -> int:
        """Branching factor k_l at branch level `level` (0-based)."""
        if isinstance(self.branch_factor, int):
            return self.branch_factor
        if level >= len(self.branch_factor):
            raise TreeError(f"no branch_factor for level {level}: branch_factor={self.branch_factor}")
        return self.branch_factor[level]

    def full_leaves(self, levels: tuple[int, ...]) -> int:
        """G_leaf = M * prod_l k_l when nothing terminates early."""
        return self.trunks * math.prod(self.factor(i) for i in range(len(levels)))


def plan_branch_levels(cfg: TreeConfig, c_med: float | None, rng: np.random.Generator) -> tuple[int, ...]:
    """Branch chunk indices for one group (#tree-shape-and-branching).

    Fixed `cfg.branch_levels` win. Otherwise, with `branch_random`, one level b_1 ~ U{1..floor(f*C_med)}
    where C_med is the task's running median success length in chunks; if that range is empty (C_med
    unknown or < 2 chunks) the group is not branched.
    """
    if cfg.branch_levels is not None:
        return cfg.branch_levels
    if not cfg.branch_random or c_med is None:
        return ()
    hi = int(math.floor(cfg.max_branch_frac * c_med))
    if hi < 1:
        return ()
    return (int(rng.integers(1, hi + 1)),)


def branch_factor_at(
    tree: Tree, node_id: int, levels: tuple[int, ...], cfg: TreeConfig, chunks_left: int
) -> int:
    """How many children to spawn at `node_id` now (0 = do not branch), for a collector at a chunk boundary.

    Branch when the node's episode has executed exactly b_l chunks for some level l, the node is a running
    leaf, and at least `cfg.min_budget_chunks` chunks of budget are left (#tree-shape-and-branching).
    """
    n = tree.node(node_id)
    if n.done or n.children or node_id == ROOT or n.chunk_end not in levels:
        return 0
    if chunks_left < cfg.min_budget_chunks:
        return 0
    return cfg.factor(levels.index(n.chunk_end))


# The brief names it `plan_branch_level`; keep that spelling as an alias.
plan_branch_level = plan_branch_levels


@dataclass
class Node:
    """State at the end of edge (parent -> id). The edge holds chunks [chunk_start, chunk_end) of the episode.

    env_steps: env steps executed on this edge (not counting the shared prefix).
    done: the episode ended on this edge (success, failure at the cap, or env done); the node is a leaf.
    leaf_return: calibrated return R of the root-to-leaf path, set after calibration (#reward-calibration).
    """

    id: int
    parent: int | None
    depth: int
    chunk_start: int
    chunk_end: int
    env_steps: int = 0
    children: list[int] = field(default_factory=list)
    done: bool = False
    success: bool = False
    leaf_return: float | None = None

    @property
    def num_chunks(self) -> int:
        return self.chunk_end - self.chunk_start

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass
class Tree:
    """One GRPO group as a tree. Build with add_trunk / extend / branch / finish / set_leaf_return."""

    task: str = ""
    group: int = 0
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes.append(Node(id=ROOT, parent=None, depth=0, chunk_start=0, chunk_end=0))

    # ---- building -------------------------------------------------------------------------------

    def node(self, node_id: int) -> Node:
        if not 0 <= node_id < len(self.nodes):
            raise TreeError(f"tree (task={self.task!r}, group={self.group}) has no node {node_id}")
        return self.nodes[node_id]

    def _new_child(self, parent: Node) -> int:
        nid = len(self.nodes)
        self.nodes.append(
            Node(
                id=nid,
                parent=parent.id,
                depth=parent.depth + 1,
                chunk_start=parent.chunk_end,
                chunk_end=parent.chunk_end,
            )
        )
        parent.children.append(nid)
        return nid

    def add_trunk(self) -> int:
        """A new trunk (child of the root, starting at chunk 0). Returns its node id."""
        return self._new_child(self.nodes[ROOT])

    def extend(self, node_id: int, env_steps: int, chunks: int = 1) -> None:
        """Append `chunks` executed chunks (`env_steps` env steps in all) to the edge ending at `node_id`."""
        n = self.node(node_id)
        if node_id == ROOT:
            raise TreeError("cannot extend the root; add a trunk first")
        if n.done or n.children:
            raise TreeError(f"cannot extend node {node_id}: it is {'done' if n.done else 'a branch node'}")
        if chunks < 1 or env_steps < 0:
            raise TreeError(
                f"extend needs chunks >= 1 and env_steps >= 0, got chunks={chunks}, env_steps={env_steps}"
            )
        n.chunk_end += chunks
        n.env_steps += env_steps

    def branch(self, node_id: int, k: int) -> list[int]:
        """Make `node_id` a branch node with k children (the original slot continues as the first child)."""
        n = self.node(node_id)
        if node_id == ROOT:
            raise TreeError("the root's children are trunks; use add_trunk")
        if n.done or n.children:
            raise TreeError(f"cannot branch node {node_id}: it is {'done' if n.done else 'already branched'}")
        if k < 2:
            raise TreeError(f"branch factor must be >= 2, got {k}")
        return [self._new_child(n) for _ in range(k)]

    def finish(self, node_id: int, success: bool) -> None:
        """Mark the episode through `node_id` as ended (it stays a leaf)."""
        n = self.node(node_id)
        if n.children or node_id == ROOT:
            raise TreeError(f"only a leaf can finish; node {node_id} has children or is the root")
        n.done, n.success = True, bool(success)

    def set_leaf_return(self, node_id: int, value: float) -> None:
        n = self.node(node_id)
        if n.children or node_id == ROOT:
            raise TreeError(f"node {node_id} is not a leaf; returns belong to leaves")
        n.leaf_return = float(value)

    # ---- queries --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def trunks(self) -> list[int]:
        return list(self.nodes[ROOT].children)

    def leaves(self) -> list[int]:
        """Leaf node ids (excluding the root), in id order."""
        return [n.id for n in self.nodes[1:] if not n.children]

    def frontier(self) -> list[int]:
        """Leaves that are still running (not done): the slots the collector must keep stepping."""
        return [i for i in self.leaves() if not self.nodes[i].done]

    def branch_nodes(self) -> list[int]:
        return [n.id for n in self.nodes[1:] if n.children]

    def path(self, node_id: int) -> list[int]:
        """Node ids from the first trunk-level node down to `node_id` (root excluded)."""
        out = []
        n = self.node(node_id)
        while n.parent is not None:
            out.append(n.id)
            n = self.nodes[n.parent]
        return out[::-1]

    def path_env_steps(self, node_id: int) -> int:
        """Env steps from the initial state to the end of `node_id` (a leaf's episode length)."""
        return sum(self.nodes[i].env_steps for i in self.path(node_id))

    def path_chunks(self, node_id: int) -> int:
        return self.node(node_id).chunk_end

    def leaf_returns(self) -> np.ndarray:
        """(leaves,) float64 returns in `leaves()` order; raises if any leaf has no return yet."""
        out = []
        for i in self.leaves():
            r = self.nodes[i].leaf_return
            if r is None:
                raise TreeError(
                    f"leaf {i} of group {self.group} ({self.task!r}) has no return; call set_leaf_return"
                )
            out.append(r)
        return np.asarray(out, dtype=np.float64)

    def to_json(self) -> dict:
        return {
            "task": self.task,
            "group": self.group,
            "nodes": [
                {k: getattr(n, k) for k in Node.__dataclass_fields__}  # plain ints/floats/bools/lists
                for n in self.nodes
            ],
        }

    @staticmethod
    def from_json(d: dict) -> Tree:
        nodes = [Node(**{**nd, "children": list(nd["children"])}) for nd in d["nodes"]]
        return Tree(task=d["task"], group=int(d["group"]), nodes=nodes)


# ---- cost accounting (#shared-prefix, #env-step-savings) ---------------------------------------------


@dataclass(frozen=True)
class TreeCost:
    """Env steps and VLM prefix forwards of a tree vs flat rollouts of the same leaf trajectories.

    env_steps: unique env steps executed (E_tree). flat_env_steps: sum of the leaves' episode lengths,
    i.e. G_leaf * T_bar, what independent rollouts would execute for the same leaves (E_indep).
    prefix_forwards: unique chunks minus the shared first chunks (trunks at c=0 and siblings at each
    branch node see one identical observation, #shared-prefix). flat_prefix_forwards: one per chunk per leaf
    path.
    """

    leaves: int
    env_steps: int
    flat_env_steps: int
    prefix_forwards: int
    flat_prefix_forwards: int

    @property
    def env_step_ratio(self) -> float:
        return self.env_steps / self.flat_env_steps if self.flat_env_steps else float("nan")

    @property
    def prefix_forwards_saved(self) -> int:
        return self.flat_prefix_forwards - self.prefix_forwards


def tree_cost(tree: Tree) -> TreeCost:
    leaves = tree.leaves()
    env_steps = sum(n.env_steps for n in tree.nodes)
    flat_env = sum(tree.path_env_steps(i) for i in leaves)
    unique_chunks = sum(n.num_chunks for n in tree.nodes)
    shared = sum(max(0, sum(1 for c in n.children if tree.nodes[c].num_chunks > 0) - 1) for n in tree.nodes)
    flat_chunks = sum(tree.path_chunks(i) for i in leaves)
    return TreeCost(len(leaves), env_steps, flat_env, unique_chunks - shared, flat_chunks)


def env_steps(tree: Tree) -> int:
    """E_tree: unique env steps executed by the tree (#env-step-savings)."""
    return tree_cost(tree).env_steps


def expected_env_step_ratio(trunks: int, branch_fracs: tuple[float, ...], factors: tuple[int, ...]) -> float:
    """Closed form E_tree / E_indep with no early termination; branch times as fractions of T
    (#env-step-savings)."""
    if len(branch_fracs) != len(factors):
        raise TreeError(f"need one factor per branch level, got {branch_fracs} and {factors}")
    taus = (0.0, *branch_fracs, 1.0)
    g_leaf = trunks * math.prod(factors)
    n = trunks
    total = 0.0
    for level in range(len(taus) - 1):
        total += n * (taus[level + 1] - taus[level])
        if level < len(factors):
            n *= factors[level]
    return total / g_leaf
