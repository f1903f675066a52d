# Two entry points for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo clean-venv bench

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	# torch pinned explicitly so pip takes the CPU wheel, never a multi-GB CUDA build
	$(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Two workers, not -n auto: xdist's auto count asks psutil for the host's physical cores, which
# in a container can be far more than the CPUs granted (every worker holds torch, numba and a
# trained bundle: ~1.4 GB). --dist loadfile: one worker per test file, so module fixtures
# (trained bundles, sweeps) are built once, not once on each worker. --durations: the slowest
# tests show at the end of the CI log.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=10

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
