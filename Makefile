# make lab   : set up .venv (first time only) and open the notebooks in JupyterLab
# make test  : set up .venv and run lint, unit tests and every notebook in smoke mode
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup lab test bench lint
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	touch $@

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	SAR_SMOKE=1 $(PY) -m pytest

bench: setup
	$(PY) benchmarks/overhead.py
