# Two commands: `make demo` (the main job) and `make test`. Both set up .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint setup clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first: the local CPU build, so the resolver never pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	# Pinned to the versions the documented results were measured with (constraints.txt).
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/e2urec demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=15

# Unit tests only (no model is trained): seconds, for the edit-test loop.
test-fast: $(STAMP) lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "not slow and not integration"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
