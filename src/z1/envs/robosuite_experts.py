"""Scripted experts for the robosuite tasks (Lift, PickPlaceCan, Door), used to record demonstrations.

Stateless state machines over privileged poses: the phase is read off the state, so they survive
snapshot/restore and can take over mid-episode.
"""

from __future__ import annotations

from typing import Any

import numpy as np

POS_SCALE = 0.05  # m per step at |action| = 1 (OSC_POSE output_max)
ROT_SCALE = 0.5  # rad per step at |action| = 1


def _rot_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Axis-angle (world frame) rotating `current` (3x3) onto `target` (3x3)."""
    import mujoco

    r = target @ current.T
    q = np.empty(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(r).reshape(9))
    if q[0] < 0:
        q = -q
    v = np.empty(3)
    mujoco.mju_quat2Vel(v, q, 1.0)
    return v


def _move(eef: np.ndarray, target: np.ndarray, gain: float = 1.0) -> np.ndarray:
    return np.clip((target - eef) / POS_SCALE * gain, -1.0, 1.0)


def _yaw_down_mat(yaw: float) -> np.ndarray:
    """Gripper pointing down (site z axis along -z world) with the fingers' closing axis at `yaw`."""
    c, s = np.cos(yaw), np.sin(yaw)
    # columns: the site's x, y, z axes in world. z down; x = -y_world at yaw 0
    x = np.array([s, -c, 0.0])
    z = np.array([0.0, 0.0, -1.0])
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def _nearest_yaw(target_yaw: float, cur: float, period: float) -> float:
    """The yaw congruent to `target_yaw` modulo `period` closest to the gripper's current yaw `cur`."""
    k = np.round((cur - target_yaw) / period)
    return target_yaw + k * period


class _ExpertView:
    """What experts read from a robosuite env."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        robot = raw.robots[0]
        d = raw.sim.data
        self.eef = np.array(d.site_xpos[robot.eef_site_id["right"]])
        self.eef_mat = np.array(d.site_xmat[robot.eef_site_id["right"]]).reshape(3, 3)
        q = d.qpos[robot._ref_gripper_joint_pos_indexes["right"]]
        self.finger_gap = float(q[0] - q[1])  # ~0.08 open, 0 closed on nothing

    rot_gain = 1.0  # fraction of the orientation error commanded per step
    rot_clip = 1.0

    def act(
        self, pos_target: np.ndarray, rot_target: np.ndarray, grip: float, gain: float = 1.0
    ) -> np.ndarray:
        a = np.zeros(7)
        a[:3] = _move(self.eef, pos_target, gain)
        err = _rot_error(self.eef_mat, rot_target)
        a[3:6] = np.clip(self.rot_gain * err / ROT_SCALE, -self.rot_clip, self.rot_clip)
        a[6] = grip
        return a


def _obj_yaw(quat_wxyz: np.ndarray) -> float:
    w, x, y, z = quat_wxyz
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def _current_yaw(mat: np.ndarray) -> float:
    """Inverse of `_yaw_down_mat` for the gripper's x axis."""
    return float(np.arctan2(mat[0, 0], -mat[1, 0]))


def _pick_and_carry(
    v: _ExpertView,
    obj: np.ndarray,
    yaw: float | None,
    goal: np.ndarray | None,
    carry_z: float,
    grasp_dz: float = 0.0,
    close_tol: float = 0.008,
) -> np.ndarray:
    """Approach above `obj`, descend, close, lift to `carry_z`, then (if `goal` given) move above `goal`
    (xy) and descend to its z, then open. `yaw` None keeps the gripper's yaw (round objects).
    The phase is decided from the current state alone."""
    yaw_cur = _current_yaw(v.eef_mat)
    rot = _yaw_down_mat(yaw_cur if yaw is None else _nearest_yaw(yaw, yaw_cur, np.pi / 2))
    grasp_point = obj + np.array([0.0, 0.0, grasp_dz])
    rel = grasp_point - v.eef
    held = (
        np.linalg.norm(rel) < 0.03
        and v.finger_gap < 0.07
        and v.raw.robots[0].gripper["right"].current_action[0] > 0
    )
    if held:
        if goal is None:
            return v.act(np.array([v.eef[0], v.eef[1], carry_z]), rot, 1.0)
        dxy = np.linalg.norm(goal[:2] - v.eef[:2])
        if dxy > 0.02:
            if v.eef[2] < carry_z - 0.03 and dxy > 0.05:
                return v.act(np.array([v.eef[0], v.eef[1], carry_z]), rot, 1.0)
            return v.act(np.array([goal[0], goal[1], carry_z]), rot, 1.0)
        if v.eef[2] > goal[2] + 0.02:
            return v.act(np.array([goal[0], goal[1], goal[2]]), rot, 1.0)
        return v.act(v.eef, rot, -1.0)
    dxy = np.linalg.norm(rel[:2])
    if dxy > 0.012:
        hover = grasp_point + np.array([0.0, 0.0, 0.10])
        if v.eef[2] < grasp_point[2] + 0.04 and dxy > 0.03:  # too low and off target: go up first
            return v.act(np.array([v.eef[0], v.eef[1], hover[2]]), rot, -1.0)
        return v.act(hover if dxy > 0.03 else np.array([grasp_point[0], grasp_point[1], v.eef[2]]), rot, -1.0)
    if rel[2] < -close_tol:
        return v.act(grasp_point, rot, -1.0)
    return v.act(grasp_point, rot, 1.0)


def expert_lift(raw: Any) -> np.ndarray:
    v = _ExpertView(raw)
    d = raw.sim.data
    cube = np.array(d.body_xpos[raw.cube_body_id])
    yaw = _obj_yaw(np.array(d.body_xquat[raw.cube_body_id]))
    table_z = float(raw.model.mujoco_arena.table_offset[2])
    return _pick_and_carry(v, cube, yaw, None, carry_z=table_z + 0.20)


def expert_pick_place_can(raw: Any) -> np.ndarray:
    v = _ExpertView(raw)
    v.rot_gain, v.rot_clip = 0.5, 0.6  # near the edge of the reach: gentle orientation corrections
    d = raw.sim.data
    bid = raw.obj_body_id["Can"]
    can = np.array(d.body_xpos[bid])
    target = np.array(raw.target_bin_placements[raw.object_to_id["can"]], dtype=np.float64)
    in_bin = not raw.not_in_bin(can, raw.object_to_id["can"])
    if in_bin:  # released: back off upwards with the gripper open
        rot = _yaw_down_mat(_current_yaw(v.eef_mat))
        return v.act(np.array([v.eef[0], v.eef[1], can[2] + 0.2]), rot, -1.0)
    # aim at the near half of the target bin region (the far corner is at the edge of the Panda's reach)
    goal = np.array([target[0], target[1] - 0.04, raw.bin2_pos[2] + 0.12])
    return _pick_and_carry(v, can, None, goal, carry_z=raw.bin2_pos[2] + 0.22, close_tol=0.015)


def expert_door(raw: Any) -> np.ndarray:
    """Grasp the handle from the front (fingers vertical around the horizontal bar) and pull it along the
    door's swing arc about the hinge."""
    import mujoco

    v = _ExpertView(raw)
    d = raw.sim.data
    m = raw.sim.model._model
    handle = np.array(d.site_xpos[raw.door_handle_site_id])
    jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, raw.door.joints[0])
    anchor = np.array(d._data.xanchor[jid])
    axis = np.array(d._data.xaxis[jid])
    # yaw target: the multiple of pi nearest to (current yaw + pi); empirically this turns the wrist so
    # the fingers close around the bar (5/5 seeds; targeting the nearest multiple itself gave 0/10)
    rot = _yaw_down_mat(_nearest_yaw(0.0, _current_yaw(v.eef_mat) + np.pi, np.pi))
    rel = handle - v.eef
    held = np.linalg.norm(rel) < 0.035 and v.raw.robots[0].gripper["right"].current_action[0] > 0.5
    if held or (np.linalg.norm(rel) < 0.02 and v.raw.robots[0].gripper["right"].current_action[0] > 0):
        if not held:  # still closing
            return v.act(handle, rot, 1.0)
        # next point on the arc: rotate the handle about the hinge axis by +0.15 rad
        r = handle - anchor
        th = 0.15
        k = axis / np.linalg.norm(axis)
        r_rot = r * np.cos(th) + np.cross(k, r) * np.sin(th) + k * np.dot(k, r) * (1 - np.cos(th))
        return v.act(anchor + r_rot, rot, 1.0, gain=1.5)
    dxy = np.linalg.norm(rel[:2])
    if dxy > 0.015:
        hover = handle + np.array([0.0, 0.0, 0.08])
        if v.eef[2] < handle[2] + 0.03 and dxy > 0.03:
            return v.act(np.array([v.eef[0], v.eef[1], hover[2]]), rot, -1.0)
        return v.act(hover if dxy > 0.03 else np.array([handle[0], handle[1], v.eef[2]]), rot, -1.0)
    if rel[2] < -0.008:
        return v.act(handle, rot, -1.0)
    return v.act(handle, rot, 1.0)


EXPERTS = {"Lift": expert_lift, "PickPlaceCan": expert_pick_place_can, "Door": expert_door}
