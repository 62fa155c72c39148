# z1: the two set-up commands of the README (`make test` = venv, lint, the suite).
SHELL := /bin/bash
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= $(MUJOCO_GL)
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: venv test demo bench lint clean

venv:
	./scripts/setup.sh

# lint first: a style slip fails in seconds, before the suite's minutes
test: lint
	.venv/bin/python -m pytest -m "not slow" -q

demo: venv
	.venv/bin/z1 demo

bench: venv
	.venv/bin/python bench/run_all.py

lint: venv
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench

clean:
	rm -rf .venv runs .pytest_cache
