"""The 24 RoboCasa v0.2 atomic tasks: class, language template, success rule, horizon.

See docs/environments.md#robocasa-tasks.

Plain data, importable without robocasa. Class names are those of `robocasa/environments/kitchen/
single_stage/*.py` at tag v0.2 (they do not exist in RoboCasa365 / v1.0, which renamed them). Horizons are
`SINGLE_STAGE_TASK_DATASETS[task]["horizon"]` of `robocasa/utils/dataset_registry.py` (the robomimic eval
horizons). The language template is the env's `ep_meta["lang"]` pattern; a live env fills the braces, and
`default_instruction()` gives a generic sentence for when no env is at hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class RoboCasaTask:
    name: str  # v0.2 env class name (robosuite.make env_name)
    family: str  # pnp | doors | drawers | sink | stove | coffee | microwave
    lang: str  # ep_meta["lang"] template
    success: str  # what `_check_success()` tests
    horizon: int  # env steps at 20 Hz
    generic: dict[str, str]  # fill-ins for default_instruction()

    def default_instruction(self) -> str:
        out = self.lang
        for key, value in self.generic.items():
            out = out.replace("{" + key + "}", value)
        if "{" in out:
            raise ValueError(f"robocasa task {self.name}: unfilled placeholder in {out!r}")
        return out

    def placeholders(self) -> tuple[str, ...]:
        return tuple(re.findall(r"\{(\w+)\}", self.lang))


_OBJ = {"obj": "object"}

ROBOCASA_TASKS: tuple[RoboCasaTask, ...] = (
    RoboCasaTask(
        "PnPCounterToCab",
        "pnp",
        "pick the {obj} from the counter and place it in the cabinet",
        "obj inside cabinet and gripper far from obj",
        500,
        _OBJ,
    ),
    RoboCasaTask(
        "PnPCabToCounter",
        "pnp",
        "pick the {obj} from the cabinet and place it on the counter",
        "obj touches counter and gripper far from obj",
        500,
        _OBJ,
    ),
    RoboCasaTask(
        "PnPCounterToSink",
        "pnp",
        "pick the {obj} from the counter and place it in the sink",
        "obj centre inside sink and gripper far from obj",
        700,
        _OBJ,
    ),
    RoboCasaTask(
        "PnPSinkToCounter",
        "pnp",
        "pick the {obj} from the sink and place it on the {container} located on the counter",
        "obj in container, container touches counter, gripper far from obj",
        500,
        {"obj": "object", "container": "container"},
    ),
    RoboCasaTask(
        "PnPCounterToMicrowave",
        "pnp",
        "pick the {obj} from the counter and place it in the microwave",
        "obj touches plate, plate touches microwave, gripper far from obj",
        600,
        _OBJ,
    ),
    RoboCasaTask(
        "PnPMicrowaveToCounter",
        "pnp",
        # sic: no "the" before {container} in v0.2
        "pick the {obj} from the microwave and place it on {container} located on the counter",
        "obj in container and gripper far from obj",
        500,
        {"obj": "object", "container": "the container"},
    ),
    RoboCasaTask(
        "PnPCounterToStove",
        "pnp",
        "pick the {obj} from the plate and place it in the {container}",
        "obj in pan (contact, xy < 0.07 m) and gripper far from obj",
        500,
        {"obj": "food", "container": "pan"},
    ),
    RoboCasaTask(
        "PnPStoveToCounter",
        "pnp",
        "pick the {obj} from the {obj_container} and place it {preposition} the {container}",
        "obj in plate/bowl (contact, xy < 0.07 m) and gripper far from obj",
        500,
        {"obj": "food", "obj_container": "pan", "preposition": "on", "container": "plate"},
    ),
    RoboCasaTask(
        "OpenSingleDoor",
        "doors",
        "open the {door} door",
        "every door joint >= 0.90 (normalised)",
        500,
        {"door": "cabinet"},
    ),
    RoboCasaTask(
        "CloseSingleDoor",
        "doors",
        "close the {door} door",
        "every door joint <= 0.05 (normalised)",
        500,
        {"door": "cabinet"},
    ),
    RoboCasaTask("OpenDoubleDoor", "doors", "open the cabinet doors", "both door joints >= 0.90", 1000, {}),
    RoboCasaTask("CloseDoubleDoor", "doors", "close the cabinet doors", "both door joints <= 0.05", 700, {}),
    RoboCasaTask(
        "OpenDrawer", "drawers", "open the {side} drawer", "drawer joint >= 0.95", 500, {"side": "left"}
    ),
    RoboCasaTask(
        "CloseDrawer", "drawers", "close the {side} drawer", "drawer joint <= 0.05", 500, {"side": "left"}
    ),
    RoboCasaTask(
        "TurnOnSinkFaucet", "sink", "turn on the sink faucet", "handle angle mod 2pi in (0.40, pi)", 500, {}
    ),
    RoboCasaTask("TurnOffSinkFaucet", "sink", "turn off the sink faucet", "water not on", 500, {}),
    RoboCasaTask(
        "TurnSinkSpout",
        "sink",
        "turn the sink spout to the {direction}",
        "spout angle: left in [pi, 2pi - pi/6], right in [pi/6, pi]",
        500,
        {"direction": "left"},
    ),
    RoboCasaTask(
        "TurnOnStove",
        "stove",
        "turn on the {knob} burner of the stove",
        "0.35 <= |knob| <= 2pi - 0.35",
        500,
        {"knob": "front left"},
    ),
    RoboCasaTask(
        "TurnOffStove",
        "stove",
        "turn off the {knob} burner of the stove",
        "knob outside the on range",
        500,
        {"knob": "front left"},
    ),
    RoboCasaTask(
        "CoffeeSetupMug",
        "coffee",
        "pick the {obj} from the counter and place it under the coffee machine dispenser",
        "mug xy within 0.04 m of the pour site, |dz| < 0.10, gripper far from mug",
        600,
        {"obj": "mug"},
    ),
    RoboCasaTask(
        "CoffeeServeMug",
        "coffee",
        "pick the {obj} from under the coffee machine dispenser and place it on the counter",
        "mug touches counter and gripper far from mug",
        600,
        {"obj": "mug"},
    ),
    RoboCasaTask(
        "CoffeePressButton",
        "coffee",
        "press the button on the coffee machine to serve coffee",
        "machine _turned_on (latched on button contact) and gripper > 0.15 m from the button",
        300,
        {},
    ),
    RoboCasaTask(
        "TurnOnMicrowave",
        "microwave",
        "press the start button on the microwave",
        "microwave _turned_on and gripper > 0.15 m from the start button",
        500,
        {},
    ),
    RoboCasaTask(
        "TurnOffMicrowave",
        "microwave",
        "press the stop button on the microwave",
        "microwave not _turned_on and gripper > 0.15 m from the stop button",
        500,
        {},
    ),
)

TASKS_BY_NAME: dict[str, RoboCasaTask] = {t.name: t for t in ROBOCASA_TASKS}
TASK_NAMES: tuple[str, ...] = tuple(TASKS_BY_NAME)
# The RoboCasa RSS'24 eval scenes (layout, style); styles 9 and 10 are held out of all training data.
EVAL_LAYOUT_STYLES: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (4, 4), (6, 9), (7, 10))
