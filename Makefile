# The two commands of the README, for a fresh Debian machine with Python 3.11:
#   make run    build .venv and run the default experiment on the synthetic world
#   make test   install the test cluster's packages (SLURM, munge), build .venv and the Waymo
#               environment .venv-waymo, run the tests
# Each builds what it needs first, so either can be the first command on a new machine.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= workflow/profiles/local

WAYMO_VENV := .venv-waymo

.PHONY: run test system-deps dry-run clean waymo-env gpu-venv

$(BIN)/occbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel, not several GB of CUDA packages
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[cpu,test]'
	# nuscenes-devkit declares numpy<2, which the rest of the stack cannot take; it works
	# with numpy 2 (tests/data/test_nuscenes.py), so it comes without its declared deps
	# (pyproject.toml lists what it imports).
	$(BIN)/pip install --quiet --no-deps nuscenes-devkit==1.2.0
	touch $@

# GPU machines (CUDA 12 driver): the same .venv with PyPI's CUDA build of torch and
# spconv-cu120; `make run` then trains on the GPU (execution.device: auto).
gpu-venv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[cu120,test]'
	$(BIN)/pip install --quiet --no-deps nuscenes-devkit==1.2.0
	$(BIN)/python -c "import torch, spconv.pytorch; assert torch.cuda.is_available(), 'no CUDA device'"
	touch $(BIN)/occbench

# reports/ is committed (the baseline of `dvc metrics diff`), so aggregation is forced:
# that makes Snakemake run every job of the grid whose results are missing or stale.
run: $(BIN)/occbench
	@start=$$(date +%s); \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile $(PROFILE) --forcerun aggregate && \
	echo "occbench: default experiment finished in $$(( $$(date +%s) - start )) s; see reports/"

dry-run: $(BIN)/occbench
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile $(PROFILE) -n

# Waymo's official tools pin TensorFlow 2.13 and numpy 1.23: their own venv, with the
# packages of workflow/envs/waymo.yml (Snakemake's per-rule conda env for the same job).
waymo-env: $(WAYMO_VENV)/bin/python

$(WAYMO_VENV)/bin/python: workflow/envs/waymo.yml $(BIN)/occbench
	$(PYTHON) -m venv $(WAYMO_VENV)
	$(WAYMO_VENV)/bin/pip install --quiet $$($(BIN)/python -c "import yaml; \
		env = yaml.safe_load(open('workflow/envs/waymo.yml')); \
		print(' '.join(p for d in env['dependencies'] if isinstance(d, dict) for p in d['pip']))")
	touch $@

# The SLURM tests start a real one-node cluster from Debian's packages (root needed).
system-deps:
	@if command -v slurmctld >/dev/null && command -v munged >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; \
	else echo "make: not root, SLURM tests will be skipped (apt-get install slurm-wlm munge)"; fi

test: system-deps $(BIN)/occbench $(WAYMO_VENV)/bin/python
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

clean:
	rm -rf results/data results/pretrain results/finetune results/logs results/benchmarks .snakemake
