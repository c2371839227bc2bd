# Two commands on a fresh machine: `make demo` and `make test`.
# Everything runs in .venv, built with Python 3.10 (deepcell 0.12.10 / TensorFlow 2.8 need it).

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out

# python3.10 on PATH, else a pyenv-installed 3.10.
PYTHON310 := $(shell for p in python3.10 $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.10*/bin/python3.10 2>/dev/null); do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && { echo $$p; break; }; done)

.PHONY: venv demo test lint typecheck pytest clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON310)" ]; then \
	  echo "error: Python 3.10 not found (deepcell 0.12.10 and TensorFlow 2.8 need it)." >&2; \
	  echo "  Install it, e.g. 'apt-get install python3.10 python3.10-venv', 'pyenv install 3.10'," >&2; \
	  echo "  or 'uv python install 3.10', then run make again." >&2; exit 1; fi
	$(PYTHON310) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[mesmer,gpu,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/codexdask demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check codexdask tests bench deploy notebooks

typecheck: $(STAMP)
	$(VENV)/bin/mypy codexdask

pytest: $(STAMP)
	$(PY) -m pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) $(DEMO_OUT)
