# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# `make demo` (and `make install`) install jgrad with its runtime dependencies only; `make test`,
# `make test-fast` and `make bench` add the dev extras (pytest, torch CPU, PyG, jraph, ...) on top.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP     := $(VENV)/.installed-dev
BENCH_STAMP   := $(VENV)/.installed-bench

.PHONY: demo test test-fast bench install clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	$(PY) -c "import jgrad.ops; print('native CPU kernels built:', jgrad.ops.native_available())"
	touch $(RUNTIME_STAMP)

$(DEV_STAMP): $(RUNTIME_STAMP) pyproject.toml
	$(PY) -m pip install -q -e ".[dev]"
	touch $(DEV_STAMP)

$(BENCH_STAMP): $(DEV_STAMP) pyproject.toml
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $(BENCH_STAMP)

install: $(RUNTIME_STAMP)

demo: $(RUNTIME_STAMP)
	$(VENV)/bin/jgrad demo

test: $(DEV_STAMP)
	$(PY) -m pytest -n 2 --dist worksteal -q

# A quick subset for development (under 2 minutes on 2 cores): every package's core behaviour, no
# end-to-end runs, subprocess kills or common-suite sweeps. `make test` stays the full suite CI runs.
FAST_TESTS := tests/test_imports.py tests/graph/test_graph.py tests/graph/test_structure.py \
	tests/graph/test_checks.py tests/graph/test_interop.py tests/graph/test_interop_jraph.py \
	tests/reliability/test_sizes.py tests/data tests/ops/test_gspmm.py tests/ops/test_gsddmm.py \
	tests/ops/test_native.py tests/gradients/test_edge_grad.py tests/gradients/test_propagation.py \
	tests/nn/test_models.py tests/train/test_step.py tests/train/test_workdir.py tests/cli/test_config.py \
	tests/reliability/test_untrusted_files.py

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -n 2 -q -m "not slow" $(FAST_TESTS)

bench: $(BENCH_STAMP)
	$(VENV)/bin/jgrad bench

clean:
	rm -rf $(VENV) build src/*.egg-info
