"""How `z1` reports an error: one message and an exit code (2 for a bad flag or value, 1 for anything else
the user can fix), and which exceptions count as a z1 bug (printed as an internal error)."""

from __future__ import annotations


def _known_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(usage errors: exit 2, other user-facing errors: exit 1), imported lazily."""
    from z1.config import ConfigError
    from z1.envs.base import EnvError
    from z1.envs.render import RenderError
    from z1.envs.vector import EnvWorkerError
    from z1.errors import LimitError, Z1Error
    from z1.rl.grpo import GRPOError
    from z1.rl.params import SelectiveError
    from z1.rl.reward import RewardError
    from z1.rollout.tree import TreeError

    usage: tuple[type[BaseException], ...] = (ConfigError, LimitError)
    other: tuple[type[BaseException], ...] = (Z1Error, EnvError, RenderError, EnvWorkerError, GRPOError)
    other += (SelectiveError, RewardError, TreeError)
    try:
        from z1.data.normalize import StatsError
        from z1.distributed.cluster import RayUnavailableError

        other += (StatsError, RayUnavailableError)
    except ImportError:  # pragma: no cover - optional pieces
        pass
    return usage, other


def describe_error(e: BaseException) -> tuple[int, str] | None:
    """(exit code, message) for an error the user can fix, None for an unexpected one (a bug)."""
    import json

    usage, other = _known_errors()
    if isinstance(e, usage):
        return 2, str(e)
    if isinstance(e, other):
        return 1, str(e)
    if isinstance(e, OSError):
        return 1, f"{e.filename}: {e.strerror or e}" if e.filename is not None else str(e)
    if isinstance(e, json.JSONDecodeError):
        return 1, f"invalid JSON ({e}); the file named in the traceback (--debug) is damaged"
    if isinstance(e, MemoryError):
        return 1, "out of memory; lower --batch-size, --num-slots or the model size"
    try:
        from safetensors import SafetensorError

        if isinstance(e, SafetensorError):
            return 1, f"a safetensors file is unreadable ({e}); it is truncated or not safetensors"
    except ImportError:  # pragma: no cover
        pass
    return None
