# make lab   : set up .venv (first time only) and open the notebooks in JupyterLab
# make test  : set up .venv and run lint, unit tests (the book's among them) and every notebook in smoke mode
# make book  : build the book (README, notebooks with their stored outputs, docs/, API) into _build/html
# make clear-cache : delete cached results (notebooks then retrain; SAR_CACHE=0 also does)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup lab test book bench lint clear-cache
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

book: setup  # never executes a notebook; warnings are errors; builds offline
	$(PY) -m sphinx -W -b html -c docs . _build/html
	@echo "open _build/html/index.html"

clear-cache: setup  # the results notebooks load instead of retraining (data/cache/)
	$(PY) -c "import sar.cache as c; print(len(c.clear_cache()), 'cache files deleted')"

bench: setup
	$(PY) benchmarks/overhead.py
