"""Policy model: pi0.5 mixture of transformers (`pi05`), its parts (`gemma`, `siglip`) and the flow sampler
(`sampling`). Tokenizer, transforms and checkpoint import live in their own modules."""

from z1.models.pi05 import (
    Pi05Policy,
    PolicyInputs,
    PrefixCache,
    count_parameters,
    make_attention_mask,
    position_ids,
)
from z1.models.sampling import ChunkSample, recompute_logprob, sample_chunk

__all__ = [
    "ChunkSample",
    "Pi05Policy",
    "PolicyInputs",
    "PrefixCache",
    "count_parameters",
    "make_attention_mask",
    "position_ids",
    "recompute_logprob",
    "sample_chunk",
]
