"""z1: efficient RL post-training of flow-based VLA policies."""

__version__ = "0.1.0"
