# The two commands of the README, for a fresh Debian machine with Python 3.11:
#   make run    build .venv and run the default experiment on the synthetic world
#   make test   install the test cluster's packages (SLURM, munge), build .venv, run the tests
# Each builds what it needs first, so either can be the first command on a new machine.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= workflow/profiles/local

.PHONY: run test system-deps dry-run clean

$(BIN)/occbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel, not several GB of CUDA packages
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/occbench
	@start=$$(date +%s); \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile $(PROFILE) && \
	echo "occbench: default experiment finished in $$(( $$(date +%s) - start )) s; see reports/"

dry-run: $(BIN)/occbench
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile $(PROFILE) -n

# The SLURM tests start a real one-node cluster from Debian's packages (root needed).
system-deps:
	@if command -v slurmctld >/dev/null && command -v munged >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; \
	else echo "make: not root, SLURM tests will be skipped (apt-get install slurm-wlm munge)"; fi

test: system-deps $(BIN)/occbench
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

clean:
	rm -rf results/data results/pretrain results/finetune results/logs results/benchmarks .snakemake
