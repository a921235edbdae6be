# One command each for the main job and the tests; both install what they need into .venv, idempotently.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements-bundled.txt | cksum | cut -d' ' -f1)
OUT    ?= reports/smollm2
HOST   ?= 127.0.0.1
PORT   ?= 8501
MODEL  ?= smollm2-135m
ARGS   ?=

.PHONY: setup report test test-fast lint bench bench-ww app browser clean

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

test: setup browser
	$(PY) -m pytest $(ARGS)

browser:  # Debian Chromium for the dashboard's browser test (Playwright drives it; it downloads no browser)
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

app: setup  # the dashboard on http://127.0.0.1:8501 (HOST=0.0.0.0 to share it; MODEL=folder for another model)
	$(PY) -m workbench dashboard --model $(MODEL) --host $(HOST) --port $(PORT)

lint: setup  # ruff, configured in pyproject.toml; fails on any finding
	$(PY) -m ruff check .

test-fast: setup browser
	$(PY) -m pytest -m 'not slow' $(ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

bench-ww: setup  # installs weightwatcher 0.7.7 into a temp folder (not the venv); ~7 min
	$(PY) benchmarks/bench_weightwatcher.py

clean:
	rm -rf $(VENV) reports
