"""Suite registry and task sets."""

from __future__ import annotations

import importlib.util

import pytest

from z1.config import ConfigError
from z1.envs.base import Env, EnvError
from z1.envs.metaworld import MetaWorldEnv
from z1.envs.registry import SUITES, make_env, suite_of_task_set, task_set


def test_metaworld_task_sets():
    assert task_set("mt10")[0] == "reach-v3" and len(task_set("mt10")) == 10
    assert len(task_set("mt50")) == 50
    quick = task_set("mw-quick")
    assert 3 <= len(quick) <= 5 and set(quick) <= set(task_set("mt50"))
    assert suite_of_task_set("mw-quick") == "metaworld"


def test_did_you_mean():
    with pytest.raises(ConfigError, match="mt10"):
        task_set("mt-10")
    with pytest.raises(ConfigError, match="metaworld"):
        make_env("metaworl")


def test_make_env():
    env = make_env("metaworld", render=False)
    assert isinstance(env, MetaWorldEnv) and isinstance(env, Env)
    assert env.spec.max_steps == 500 and env.spec.action_dim == 4 and env.spec.state_dim == 4
    assert set(SUITES) == {"metaworld", "robosuite", "robocasa", "libero"}


@pytest.mark.parametrize("suite", ["robosuite", "robocasa"])
def test_missing_adapter_is_a_clear_error(suite):
    if importlib.util.find_spec(f"z1.envs.{suite}") is not None:
        pytest.skip(f"z1.envs.{suite} exists")
    with pytest.raises(EnvError, match=suite):
        make_env(suite)


def test_commands(tmp_path):
    from rich.console import Console

    from z1.envs.commands import check_experts, list_tasks, show_task

    table = list_tasks("metaworld")
    assert "press the button from the top" in table and "mw-quick" in table
    res = check_experts(
        "metaworld", ["button-press-topdown-v3"], [0, 1], noise=0.1, console=Console(quiet=True)
    )
    assert res["tasks"]["button-press-topdown-v3"]["success_rate"] == 1.0
    with pytest.raises(EnvError, match="reach-v3"):
        check_experts("metaworld", ["reach-v33"], [0])
    paths = show_task("reach-v3", tmp_path, seed=0)
    assert sorted(p.name for p in paths) == ["reach-v3_seed0_scene.png", "reach-v3_seed0_wrist.png"]
