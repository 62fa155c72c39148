# z1: the two set-up commands of the README.
SHELL := /bin/bash
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= $(MUJOCO_GL)
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: venv test demo bench lint clean

venv:
	./scripts/setup.sh

test: venv
	.venv/bin/python -m pytest -m "not slow" -q

demo: venv
	.venv/bin/z1 demo

bench: venv
	.venv/bin/python bench/run_all.py

lint: venv
	.venv/bin/ruff check src tests bench

clean:
	rm -rf .venv runs .pytest_cache
