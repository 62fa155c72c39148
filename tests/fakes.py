"""A deterministic point-mass env behind the vector-env interface, for fast collector/trainer tests.

The agent moves a point on a line by the sum of its action's first dim; success when it passes `goal`.
Images encode the position, so identical states give bit-identical observations.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from z1.types import ChunkResult, EnvSpec, FeatureStats, Normalization, Observation

SPEC = EnvSpec(
    suite="fake",
    cameras=("scene", "wrist"),
    image_size=(64, 64),
    state_names=("x", "y", "z", "g"),
    action_names=("dx", "dy", "dz", "dg"),
    action_low=(-1.0,) * 4,
    action_high=(1.0,) * 4,
    max_steps=40,
)


def identity_norm(d: int = 4) -> Normalization:
    st = FeatureStats(
        np.zeros(d, np.float32), np.ones(d, np.float32), -np.ones(d, np.float32), np.ones(d, np.float32)
    )
    return Normalization(st, st, "quantile")


def tiny_runner(seed: int = 0, h_exec: int = 4):
    """A freshly initialized tiny policy acting in the fake env (identity normalization)."""
    import torch

    from z1.config import policy_preset
    from z1.models.pi05 import Pi05Policy
    from z1.models.tokenizer import make_tokenizer
    from z1.models.transforms import ObservationEncoder
    from z1.rollout.runner import PolicyRunner

    torch.manual_seed(seed)
    model = Pi05Policy(policy_preset("tiny")).eval()
    norm = identity_norm()
    enc = ObservationEncoder(model.config, norm, make_tokenizer(model.config))
    return PolicyRunner(model, enc, norm, SPEC, h_exec=h_exec)


class FakeVectorEnv:
    def __init__(self, num_slots: int, goal: float = 1.5) -> None:
        self.num_slots = num_slots
        self.spec = SPEC
        self.goal = goal
        self.state = [dict(task="", seed=0, t=0, pos=0.0) for _ in range(num_slots)]
        self.resets = 0

    def _obs(self, s: int) -> Observation:
        st = self.state[s]
        v = int(np.clip(128 + 40 * st["pos"], 0, 255))
        img = np.full((64, 64, 3), v, dtype=np.uint8)
        img[0, 0, 0] = st["seed"] % 256
        return Observation(
            images={"scene": img, "wrist": 255 - img},
            state=np.array([st["pos"], 0, 0, 0], dtype=np.float32),
            instruction=f"move right {st['task']}",
        )

    def reset(self, slots, tasks, seeds):
        out = []
        for s, task, seed in zip(slots, tasks, seeds):
            self.resets += 1
            self.state[s] = dict(task=task, seed=seed, t=0, pos=0.01 * (seed % 7))
            out.append(self._obs(s))
        return out

    def clone(self, src: int, dst: int) -> None:
        self.state[dst] = copy.deepcopy(self.state[src])

    def clone_many(self, src: int, dsts, observe: bool = False):
        for d in dsts:
            self.clone(src, d)
        return [self._obs(d) if observe else None for d in dsts]

    def snapshot(self, slot: int):
        return copy.deepcopy(self.state[slot])

    def restore(self, slot: int, snap) -> Observation:
        self.state[slot] = copy.deepcopy(snap)
        return self._obs(slot)

    def run_chunks(self, actions, stop_on_success=True, observe=True):
        out = {}
        for s, acts in actions.items():
            st = self.state[s]
            rewards, success_step, done = [], -1, False
            for i, a in enumerate(np.asarray(acts)):
                st["pos"] += 0.1 * float(a[0])
                st["t"] += 1
                rewards.append(0.0)
                if st["pos"] > self.goal and success_step < 0:
                    success_step = i
                done = st["t"] >= SPEC.max_steps
                if done or (stop_on_success and success_step >= 0):
                    break
            out[s] = ChunkResult(
                steps=len(rewards),
                rewards=np.asarray(rewards, np.float32),
                success=success_step >= 0,
                success_step=success_step,
                done=done,
                t=st["t"],
                observation=self._obs(s) if observe else None,
            )
        return out

    def close(self) -> None:
        pass


def tiny_sentencepiece(directory: Path, vocab_size: int = 40) -> Path:
    """Train a small SentencePiece model (pi0.5-style ids: pad 0, eos 1, bos 2, unk 3); returns its path."""
    import sentencepiece as spm

    corpus = directory / "spm_corpus.txt"
    lines = ["Task: pick up the red cube, State: 1 2 3;", "Action: open the drawer", "close the door now"]
    corpus.write_text("\n".join(lines * 30))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "sp"),
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        minloglevel=2,
    )
    return directory / "sp.model"
