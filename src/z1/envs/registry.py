"""Simulator suites and named task sets.

Adapters are imported lazily by module path, so a missing or broken robosuite/RoboCasa adapter never
breaks Meta-World. A suite module may publish task sets as `TASK_SETS: dict[str, Sequence[str]]`
and/or `SUITE_TASKS` (a list of all tasks, exposed as the task set named after the suite, or a dict of
task sets).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from z1.config import lookup
from z1.envs.base import Env, EnvError

SUITES: dict[str, str] = {
    "metaworld": "z1.envs.metaworld:MetaWorldEnv",
    "robosuite": "z1.envs.robosuite:RobosuiteEnv",
    "robocasa": "z1.envs.robocasa:RoboCasaEnv",
    "libero": "z1.envs.libero:LiberoEnv",
}


def _module(suite: str) -> ModuleType:
    path = lookup(SUITES, suite, "env suite").split(":")[0]
    try:
        return importlib.import_module(path)
    except Exception as e:  # ImportError, or a simulator failing at import: never break other suites
        raise EnvError(
            f"env suite {suite!r} is unavailable: importing {path} failed ({e}). "
            "Install the simulator extra: `pip install -e '.[sim]'`."
        ) from e


def env_class(suite: str) -> type:
    cls_name = lookup(SUITES, suite, "env suite").split(":")[1]
    mod = _module(suite)
    if not hasattr(mod, cls_name):
        raise EnvError(f"env suite {suite!r}: module {mod.__name__} has no class {cls_name}")
    return getattr(mod, cls_name)


def make_env(suite: str, **kw: Any) -> Env:
    """Build the adapter of `suite` ("metaworld" | "robosuite" | "robocasa") with keyword options."""
    return env_class(suite)(**kw)


def _suite_task_sets(suite: str) -> dict[str, list[str]]:
    mod = _module(suite)
    out: dict[str, list[str]] = {}
    sets = getattr(mod, "TASK_SETS", None)
    if isinstance(sets, Mapping):
        out.update({str(k): list(v) for k, v in sets.items()})
    tasks = getattr(mod, "SUITE_TASKS", None)
    if isinstance(tasks, Mapping):
        out.update({str(k): list(v) for k, v in tasks.items()})
    elif isinstance(tasks, Sequence) and not isinstance(tasks, str):
        out.setdefault(suite, list(tasks))
    return out


def all_task_sets() -> dict[str, tuple[str, list[str]]]:
    """Task-set name -> (suite, tasks), over every suite whose adapter imports."""
    out: dict[str, tuple[str, list[str]]] = {}
    for suite in SUITES:
        try:
            sets = _suite_task_sets(suite)
        except EnvError:
            if suite == "metaworld":
                raise
            continue
        for name, tasks in sets.items():
            out.setdefault(name, (suite, tasks))
    return out


def task_set(name: str) -> list[str]:
    """The tasks of a named task set (e.g. "mt10", "mt50", "mw-quick"); did-you-mean on typos."""
    return list(lookup(all_task_sets(), name, "task set")[1])


def suite_of_task_set(name: str) -> str:
    return lookup(all_task_sets(), name, "task set")[0]
