"""PolicyConfig <-> JSON, as stored in a checkpoint's config.json.

The reader is strict because a checkpoint's geometry decides whether its weights load: an unknown field or
a value of the wrong type is a `CheckpointError` naming the field (a typo must not silently fall back to a
default), while a missing field takes the dataclass default (so older checkpoints keep loading).
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, fields, is_dataclass
from typing import Any

from z1.config import PolicyConfig
from z1.models.errors import CheckpointError


def policy_config_to_json(config: PolicyConfig) -> dict[str, Any]:
    """Nested frozen dataclasses -> plain JSON (tuples become lists)."""
    return json.loads(json.dumps(asdict(config)))


def policy_config_from_json(data: Mapping[str, Any], where: str = "policy") -> PolicyConfig:
    """Inverse of `policy_config_to_json` (tuples restored, missing fields take their defaults; a field of
    the wrong type is a CheckpointError naming it)."""
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{where}: expected an object, got {type(data).__name__}")
    try:
        return _from_json(PolicyConfig, data, where)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as e:  # PolicyConfig's own checks
        raise CheckpointError(f"{where}: {e}") from e


def _from_json(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(
            f"{where}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(names)}"
        )
    kw: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue  # the dataclass default
        kw[f.name] = _coerce(hints[f.name], data[f.name], f"{where}.{f.name}")
    return cls(**kw)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if isinstance(tp, type) and is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise CheckpointError(f"{where}: expected an object for {tp.__name__}, got {value!r}")
        return _from_json(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise CheckpointError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        for a in args:
            try:
                return _coerce(a, value, where)
            except CheckpointError:
                continue
        raise CheckpointError(f"{where}: {value!r} is not a {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise CheckpointError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise CheckpointError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CheckpointError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CheckpointError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise CheckpointError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def dataclass_from_json(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Any frozen-dataclass config (e.g. a run's recorded SFTConfig or RLConfig) from its `asdict` JSON,
    with the same strictness as the checkpoint reader: an unknown field or a value of the wrong type is a
    CheckpointError naming it, a missing field takes the dataclass default."""
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{where}: expected an object, got {type(data).__name__}")
    return _from_json(cls, data, where)
