# The two commands a newcomer runs:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUM := $(shell cksum pyproject.toml | cut -d' ' -f1)
DEMO_STAMP := $(VENV)/.demo-$(SUM)
TEST_STAMP := $(VENV)/.test-$(SUM)
ARGS ?=

.PHONY: demo test lint bench install clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The demo needs only the runtime and the demo extra (faster on a fresh machine).
$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[demo]'
	rm -f $(VENV)/.demo-*
	touch $@

$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.test-* $(VENV)/.demo-*
	touch $@ $(DEMO_STAMP)

install: $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/shadowtrial demo $(ARGS)

test: $(TEST_STAMP)
	$(PY) -m pytest $(ARGS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(TEST_STAMP)
	$(PY) benchmarks/run_proxy_bench.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
