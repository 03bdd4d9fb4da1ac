# make lab   : set up .venv (first time only) and open the notebooks in JupyterLab
# make test  : set up .venv and run lint, unit tests and every notebook in smoke mode
# make clear-cache : delete cached results (notebooks then retrain; SAR_CACHE=0 also does)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup lab test bench lint clear-cache
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

clear-cache: setup  # the results notebooks load instead of retraining (data/cache/)
	$(PY) -c "import sar.cache as c; print(len(c.clear_cache()), 'cache files deleted')"

bench: setup
	$(PY) benchmarks/overhead.py
