"""Assembly shared by the stages: task lists, vector envs, the acting policy, progress bars."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from z1.config import ConfigError
from z1.envs.registry import all_task_sets, suite_of_task_set, task_set
from z1.models.tokenizer import make_tokenizer
from z1.models.transforms import ObservationEncoder
from z1.rollout.runner import PolicyRunner
from z1.types import EnvSpec


def resolve_tasks(tasks: str) -> list[str]:
    """A task-set name (`mw-quick`, `mt10`, ...) or a comma-separated list of task names."""
    if "," in tasks or tasks.endswith("-v3"):
        return [t.strip() for t in tasks.split(",") if t.strip()]
    return task_set(tasks)


def suite_for(tasks: str, suite: str | None = None) -> str:
    """The simulator suite of a task spec: explicit, else the suite of the task set or of its first task."""
    if suite:
        return suite
    if "," not in tasks and not tasks.endswith("-v3"):
        return suite_of_task_set(tasks)
    first = resolve_tasks(tasks)[0]
    for set_suite, names in all_task_sets().values():
        if first in names:
            return set_suite
    return "metaworld"


def make_vector_env(suite: str, num_slots: int, workers: int, image_size: int, ray: str | None = None):
    """Env slots in `workers` processes (0 = in-process, sequential), or with `ray` ("local" starts a
    Ray cluster on this machine, "auto" joins a running one) on `workers` Ray actors (0 = one per CPU
    of the cluster)."""
    from z1.envs.vector import InProcessVectorEnv, VectorEnv

    kw = {"image_size": (image_size, image_size)}
    if ray is not None:
        from z1.distributed import RayVectorEnv, start_ray

        start_ray(ray)  # type: ignore[arg-type]
        return RayVectorEnv(suite, num_slots, num_actors=workers if workers > 0 else None, env_kwargs=kw)
    if workers <= 0:
        return InProcessVectorEnv(suite, num_slots, env_kwargs=kw)
    return VectorEnv(suite, num_slots, num_workers=workers, env_kwargs=kw)


def build_runner(
    model, norm, spec: EnvSpec, h_exec: int, share_prefix: bool = True, tokenizer_path: str | None = None
) -> PolicyRunner:
    """The acting policy for `spec`; `tokenizer_path` is the SentencePiece file real checkpoints need.

    Refuses (ConfigError) a checkpoint whose state/action dims or action horizon do not fit the env."""
    check_fits_env(model.config, norm, spec, h_exec)
    encoder = ObservationEncoder(model.config, norm, make_tokenizer(model.config, tokenizer_path))
    return PolicyRunner(model, encoder, norm, spec, h_exec, share_prefix=share_prefix)


def check_fits_env(pc, norm, spec: EnvSpec, h_exec: int) -> None:
    """ConfigError unless the policy `pc` with statistics `norm` can act in `spec` executing `h_exec`."""
    if not 1 <= h_exec <= pc.action_horizon:
        raise ConfigError(
            f"--h-exec {h_exec} must be in 1..{pc.action_horizon}, the checkpoint's action horizon"
        )
    if spec.action_dim > pc.action_dim:
        raise ConfigError(
            f"the {spec.suite} env has {spec.action_dim} action dims but the checkpoint's policy has "
            f"{pc.action_dim}; use a checkpoint trained for this suite"
        )
    if norm is None:
        return
    for name, got, st in (("state", spec.state_dim, norm.state), ("action", spec.action_dim, norm.action)):
        want = int(np.asarray(st.mean).reshape(-1).shape[0])
        if want != got:
            raise ConfigError(
                f"the checkpoint's normalization statistics have {want} {name} dims but the {spec.suite} env "
                f"has {got}; the checkpoint was trained on another robot or suite (check --suite / --tasks)"
            )


@contextmanager
def progress_bar(console: Console | None = None, transient: bool = False, disable: bool = False):
    """A rich progress bar with count, elapsed and remaining time (`disable`: draw nothing, e.g. on the
    non-zero ranks of a data-parallel job)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
        disable=disable,
    )
    with progress:
        orig_add = progress.add_task

        def add_task(description: str, **kw):
            kw.setdefault("info", "")
            return orig_add(description, **kw)

        progress.add_task = add_task  # type: ignore[method-assign]
        yield progress
