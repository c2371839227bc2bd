# Two commands on a fresh machine: `make demo` and `make test`.
#
# .venv           the main environment: Python 3.11, numpy 2, PyTorch (Mesmer's network), dask,
#                 dask-cuda; no TensorFlow. Everything a user runs, `make demo` included.
# .venv-deepcell  the reference environment: Python 3.10, deepcell 0.12.10, TensorFlow 2.8; used
#                 only to convert Mesmer weights and to prove parity with deepcell (`make test`).
#                 No zarr 3 there (it needs 3.11), so no stores: its tests exchange arrays.
# .venv-reader    Python 3.12 with ome-zarr-py >= 0.21: reads the mosaics back, and resolves
#                 codexdask's extras next to spatialdata and ome-zarr (`make test`).

VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
REF      := .venv-deepcell
REF_PY   := $(REF)/bin/python
REF_STAMP := $(REF)/.installed
READER   := .venv-reader
READER_STAMP := $(READER)/.installed
DEMO_OUT ?= demo_out
# Any torch >= 2.4 works. 2.13.0 is the CPU build this project's machines keep on disk (pip takes
# it from there; elsewhere pip downloads the CUDA build of the same release).
TORCH    ?= torch==2.13.0

# python3.X on PATH, else a pyenv-installed 3.X.
find_python = $(shell for p in python$(1) $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$(1)*/bin/python$(1) 2>/dev/null); do \
	$$p -c 'import sys; assert sys.version_info[:2] == tuple(map(int, "$(1)".split(".")))' >/dev/null 2>&1 && { echo $$p; break; }; done)
PYTHON311 := $(call find_python,3.11)
PYTHON310 := $(call find_python,3.10)
PYTHON312 := $(call find_python,3.12)

.PHONY: help venv venv-reference demo test lint typecheck pytest pytest-reference test-slurm \
	slurm-install clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

venv: $(STAMP)  ## Build the main environment (.venv)
venv-reference: $(REF_STAMP)  ## Build the reference environment (.venv-deepcell)
venv-reader: $(READER_STAMP)  ## Build the OME-Zarr reader environment (.venv-reader)

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON311)" ]; then \
	  echo "error: Python 3.11 not found (the main environment: numpy 2, PyTorch)." >&2; \
	  echo "  Install it, e.g. 'apt-get install python3.11 python3.11-venv', 'pyenv install 3.11'," >&2; \
	  echo "  or 'uv python install 3.11', then run make again." >&2; exit 1; fi
	$(PYTHON311) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH)'
	$(PY) -m pip install -q -e '.[mesmer,gpu,dev]'
	touch $(STAMP)

$(REF_STAMP): pyproject.toml
	@if [ -z "$(PYTHON310)" ]; then \
	  echo "error: Python 3.10 not found (the reference environment: deepcell 0.12.10 and" >&2; \
	  echo "  TensorFlow 2.8 need it). Install it, e.g. 'pyenv install 3.10', then run make again." >&2; \
	  exit 1; fi
	$(PYTHON310) -m venv $(REF)
	$(REF_PY) -m pip install -q --upgrade pip
	$(REF_PY) -m pip install -q -e '.[deepcell,dev]'
	touch $(REF_STAMP)

$(READER_STAMP):
	@if [ -z "$(PYTHON312)" ]; then \
	  echo "error: Python 3.12 not found (the reader environment: ome-zarr-py 0.21 needs it)." >&2; \
	  echo "  Install it, e.g. 'pyenv install 3.12', then run make again." >&2; exit 1; fi
	$(PYTHON312) -m venv $(READER)
	$(READER)/bin/python -m pip install -q --upgrade pip
	$(READER)/bin/python -m pip install -q 'ome-zarr>=0.21'
	touch $(READER_STAMP)

demo: $(STAMP)  ## Run the demo on a synthetic slide (local cluster, watershed) into demo_out/
	$(VENV)/bin/codexdask demo --out $(DEMO_OUT)

lint: $(STAMP)  ## ruff over the code, tests, benchmarks, recipes and notebooks
	$(VENV)/bin/ruff check codexdask tests bench deploy notebooks

typecheck: $(STAMP)  ## mypy (every function of the pure kernels typed)
	$(VENV)/bin/mypy codexdask

# The main suite, with the cross-environment tests (they call the reference and reader pythons).
pytest: $(STAMP) $(REF_STAMP) $(READER_STAMP)  ## The main suite, with the cross-environment tests
	CODEXDASK_REFERENCE_PYTHON=$(abspath $(REF_PY)) CODEXDASK_REQUIRE_REFERENCE=1 \
	  CODEXDASK_READER_PYTHON=$(abspath $(READER)/bin/python) CODEXDASK_REQUIRE_READER=1 \
	  $(PY) -m pytest -q -m "not reference and not slurm"

# Tests against deepcell and TensorFlow themselves, in the reference environment.
pytest-reference: $(REF_STAMP)  ## Tests against deepcell and TensorFlow, in the reference environment
	$(REF_PY) -m pytest -q -m reference -o addopts="-ra --strict-markers" tests

test: lint typecheck pytest-reference pytest  ## Lint, types, both suites (CI then runs test-slurm)

# A real one-node SLURM cluster (munged, slurmctld, slurmd; deploy/slurm/local-cluster.sh) runs
# the SLURM recipe's tests, then is stopped. Needs root and the packages (make slurm-install);
# where it cannot start, the tests say why they skip (CODEXDASK_REQUIRE_SLURM=1 fails instead).
SLURM_DIR ?= /tmp/codexdask-slurm
test-slurm: $(STAMP)  ## The SLURM recipe on a real one-node SLURM cluster (root; ~6 min)
	@CODEXDASK_SLURM_DIR=$(SLURM_DIR) deploy/slurm/local-cluster.sh start \
	  || echo "test-slurm: SLURM did not start here (see above)"
	SLURM_CONF=$(SLURM_DIR)/slurm.conf $(PY) -m pytest -q -m slurm tests/slurm; \
	  status=$$?; CODEXDASK_SLURM_DIR=$(SLURM_DIR) deploy/slurm/local-cluster.sh stop; exit $$status

slurm-install:  ## Install munge and SLURM from the system's packages (root, apt-get)
	deploy/slurm/local-cluster.sh install

clean:  ## Remove the three environments and the demo's output
	rm -rf $(VENV) $(REF) $(READER) $(DEMO_OUT)
