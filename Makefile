# Two entry points (see README): `make run` and `make test`.  Both create the
# project's virtual environment on first use; everything the project needs is
# installed from pyproject.toml.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= cluster_profiles/local
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup run test test-slow lint bench system-deps

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the local CPU wheel.  DeepSpeed's sdist then builds
	# against it instead of resolving a CUDA torch.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	snakemake --profile $(PROFILE)

lint: setup
	ruff check diver tests benchmarks
	snakefmt --check Snakefile workflow

test: setup lint
	pytest -n 2

test-slow: setup
	pytest -m slow -n 2

bench: setup
	python benchmarks/bench_corpus.py
	python benchmarks/bench_loader.py
	python benchmarks/bench_model.py
	python benchmarks/bench_pretrain.py
	python benchmarks/bench_scaling.py
	python benchmarks/bench_dag.py

# Debian packages the SLURM tests (a real local cluster: `diver localslurm start`) and
# the report's headless-browser test need.  Root only; CI runs it before the tests.
SYSTEM_PACKAGES := slurmctld slurmd slurm-client munge slurmdbd mariadb-server chromium
system-deps:
	@if [ "$$(id -u)" != 0 ]; then echo "system-deps: run as root (apt-get)"; exit 1; fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null \
	  || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES))
