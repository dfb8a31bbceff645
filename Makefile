# The project's verbs. `make demo` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast drill lint format bench clean-demo

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@echo "installing the pinned dependencies into $(VENV) (quiet; a few minutes the first time, torch is the big one)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $(STAMP)

install: $(STAMP)

## demo: generate demo data, embed its images, train, predict, print the AUCs and every output path
demo: install
	$(PY) scripts/run_demo.py

## test: the default test suite (slow end-to-end tests included; see README)
test: install
	@echo "running the whole test suite, slow end-to-end tests included: about 8-15 minutes on 2 CPU cores, one dot per test (make test-fast skips the slow ones)"
	$(PY) -m pytest -q

test-fast: install
	@echo "running the test suite without the slow end-to-end tests: a few minutes, one dot per test"
	$(PY) -m pytest -q -m "not slow"

## drill: SIGKILL every long-running command at seeded moments, a full disk, a read-only folder,
## and a corpus of bad inputs, on the tiny preset; one line of counts, exit 1 if any falls short
drill: install
	$(PY) scripts/drill.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) scripts/bench.py

clean-demo:
	rm -rf data/demo checkpoints/demo submission/demo
