"""Offscreen MuJoCo rendering on a headless CPU machine (Mesa llvmpipe through EGL or OSMesa).

Two measured facts shape this module (docs/environments.md#rendering):
- Shadows and reflections cost tens of ms per frame on llvmpipe (a Meta-World frame: ~80 ms with the
  default flags, ~21 ms with both off; ~16 ms per 64x64 camera frame in bench/results/envs.json).
  The flags live in the `MjvScene` and are forced off after every `mjv_updateScene`.
- Several GL contexts in one process gave stale or black frames (EGL and OSMesa). So a process holds
  exactly one GL context (`_process_gl_context`, created on first use); a `CameraRenderer` keeps one
  `MjrContext` + `MjvScene` per model (or per shared key) on top of it, so many envs and tasks in one
  process share it. Env slots of one Meta-World task share one `MjrContext` (`process_renderer`).

`select_gl_backend()` must run before `mujoco` is imported (mujoco reads `MUJOCO_GL` at import time).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import subprocess
import sys
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

GL_BACKENDS: tuple[str, ...] = ("egl", "osmesa")
_PROBE = "import mujoco; c = mujoco.GLContext(8, 8); c.make_current(); c.free(); print('ok')"


class RenderError(RuntimeError):
    """No working offscreen OpenGL backend, or rendering failed."""


def probe_gl_backend(backend: str, timeout: float = 120.0) -> str | None:
    """Try to create a MuJoCo GL context with `backend` in a fresh interpreter. None if it works, else
    the tail of the error output."""
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        p = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if p.returncode == 0 and "ok" in p.stdout:
        return None
    return (p.stderr.strip().splitlines() or ["(no output)"])[-1]


def select_gl_backend() -> str:
    """Return the MuJoCo GL backend to use, setting `MUJOCO_GL` (and `PYOPENGL_PLATFORM`) if unset.

    An explicit `MUJOCO_GL` is respected. Otherwise EGL then OSMesa are probed in a subprocess and the
    first that works is chosen. Raises `RenderError` with install hints if neither works.
    """
    current = os.environ.get("MUJOCO_GL")
    if current:
        os.environ.setdefault("PYOPENGL_PLATFORM", current)
        return current
    if "mujoco" in sys.modules:
        raise RenderError(
            "mujoco was imported before MUJOCO_GL was set, so it picked its default (GLFW, needs a display). "
            "Set MUJOCO_GL=egl or MUJOCO_GL=osmesa in the environment, or call "
            "z1.envs.render.select_gl_backend() before importing mujoco/metaworld/robosuite."
        )
    errors: dict[str, str] = {}
    for backend in GL_BACKENDS:
        err = probe_gl_backend(backend)
        if err is None:
            os.environ["MUJOCO_GL"] = backend
            os.environ["PYOPENGL_PLATFORM"] = backend
            return backend
        errors[backend] = err
    detail = "; ".join(f"{b}: {e}" for b, e in errors.items())
    raise RenderError(
        f"no headless OpenGL backend works ({detail}). Install one: "
        "`apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1` (EGL) or "
        "`apt-get install -y libosmesa6` (OSMesa), then set MUJOCO_GL=egl or MUJOCO_GL=osmesa."
    )


@functools.cache
def _process_gl_context() -> Any:
    """The one GL context of this process (see module docstring), created on first use."""
    import mujoco

    backend = os.environ.get("MUJOCO_GL", "(unset)")
    try:
        ctx = mujoco.GLContext(64, 64)
        ctx.make_current()
    except Exception as e:  # the GL libraries raise assorted types (AttributeError, RuntimeError...)
        raise RenderError(
            f"could not create an offscreen GL context with MUJOCO_GL={backend}: {type(e).__name__}: {e}. "
            "Try MUJOCO_GL=egl or MUJOCO_GL=osmesa (set it before mujoco is imported)."
        ) from e
    # Free it while the interpreter is still whole; left to __del__ at shutdown, the EGL binding is
    # already torn down and prints a TypeError.
    atexit.register(_free_quietly, ctx)
    return ctx


def _free_quietly(ctx: Any) -> None:
    with contextlib.suppress(Exception):
        ctx.free()


class CameraRenderer:
    """Renders fixed cameras of any number of models at one resolution, shadows and reflections off.

    GL resources (an `MjrContext` with the model's textures and meshes, and an `MjvScene`) are kept per
    model, or per `share_key`: models built from the same XML (e.g. one Meta-World task in 8 env slots)
    can pass the same key and share one set, which is correct because the context holds only what the
    XML fixes, and saves ~100 MB of llvmpipe memory per extra model. The set is freed when the last
    model using it is forgotten.
    """

    def __init__(self, height: int, width: int) -> None:
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {(height, width)}")
        self.height = height
        self.width = width
        self._per_key: dict[Hashable, tuple[Any, Any, set[int]]] = {}  # key -> (MjrContext, MjvScene, users)
        self._option: Any = None
        self._camera: Any = None

    @property
    def num_contexts(self) -> int:
        """GL context sets held (one per model or per share key)."""
        return len(self._per_key)

    def _contexts(self, model: Any, share_key: Hashable | None) -> tuple[Any, Any]:
        import mujoco

        key = ("model", id(model)) if share_key is None else ("shared", share_key)
        entry = self._per_key.get(key)
        if entry is None:
            gl = _process_gl_context()
            gl.make_current()
            if self.width > model.vis.global_.offwidth or self.height > model.vis.global_.offheight:
                raise RenderError(
                    f"image size {(self.height, self.width)} exceeds the model's offscreen buffer "
                    f"{(model.vis.global_.offheight, model.vis.global_.offwidth)}"
                )
            ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150.value)
            scene = mujoco.MjvScene(model, maxgeom=10000)
            entry = (ctx, scene, set())
            self._per_key[key] = entry
            if self._option is None:
                self._option = mujoco.MjvOption()
                self._camera = mujoco.MjvCamera()
                self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        entry[2].add(id(model))
        return entry[0], entry[1]

    def render(
        self, model: Any, data: Any, camera_ids: Sequence[int], share_key: Hashable | None = None
    ) -> list[np.ndarray]:
        """One uint8 (y, x, 3) image per camera id, rows top to bottom as MuJoCo's camera sees them.

        `share_key`: models rendered with the same key share GL resources (they must come from one XML).
        """
        import mujoco

        ctx, scene = self._contexts(model, share_key)
        _process_gl_context().make_current()
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, ctx)
        rect = mujoco.MjrRect(0, 0, self.width, self.height)
        out: list[np.ndarray] = []
        for cam_id in camera_ids:
            self._camera.fixedcamid = int(cam_id)
            mujoco.mjv_updateScene(
                model, data, self._option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL.value, scene
            )
            scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
            mujoco.mjr_render(rect, scene, ctx)
            img = np.empty((self.height, self.width, 3), dtype=np.uint8)  # (y, x, c)
            mujoco.mjr_readPixels(img, None, rect, ctx)
            out.append(img[::-1])  # OpenGL rows are bottom-up
        return out

    def forget(self, model: Any, share_key: Hashable | None = None) -> None:
        """`model` no longer renders here; free its GL resources once no model uses them."""
        key = ("model", id(model)) if share_key is None else ("shared", share_key)
        entry = self._per_key.get(key)
        if entry is None:
            return
        entry[2].discard(id(model))
        if not entry[2]:
            del self._per_key[key]
            _process_gl_context().make_current()
            entry[0].free()

    def close(self) -> None:
        if self._per_key:
            _process_gl_context().make_current()
        for ctx, _, _ in self._per_key.values():
            ctx.free()
        self._per_key.clear()


@functools.cache
def process_renderer(height: int, width: int) -> CameraRenderer:
    """The `CameraRenderer` that all envs of this process share at this image size, so that env slots
    of the same task share GL resources (`share_key`). Like the GL context it sits on, one per process."""
    return CameraRenderer(height, width)
