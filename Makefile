# Everything a newcomer needs: `make demo` and `make test` each set up .venv from scratch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow bench bench-sparse bench-real bench-exact bench-multiclass bench-scale-out docs lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml $(BIN)/activate
	$(BIN)/pip install --quiet -e ".[test,plots]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m ngvi demo --out demo-output

# One BLAS thread per test worker: XLA runs LAPACK from its own thread pool, and OpenBLAS's
# threads on top oversubscribe a small machine (a 256 x 256 Cholesky took 390 ms instead of
# 0.4 ms under load).
test: $(VENV)/.installed
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --dist worksteal

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_natural_gradient.py

# Sparse GPs: banana-5300 against GPJax 1.0 (run in its own venv), skin, a 10^6 x 8 problem;
# rewrites the sparse section of benchmarks/README.md.
PEERS := benchmarks/.venv-peers
$(PEERS)/bin/python:
	$(PYTHON) -m venv $(PEERS) && $(PEERS)/bin/pip install --quiet gpjax==1.0.0 -e . \
		|| { rm -rf $(PEERS); exit 1; }

bench-sparse: $(VENV)/.installed $(PEERS)/bin/python
	$(BIN)/python benchmarks/bench_sparse.py

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n auto -m slow

docs: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[docs]"
	$(BIN)/mkdocs build --strict

# 5-fold CV on five real data sets, ngvi vs scikit-learn's Laplace GPC; rewrites docs/results.md.
bench-real: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[sklearn]"
	$(BIN)/python benchmarks/bench_real_data.py

# Sonar's folds: Laplace, VI and the exact posterior (elliptical slice sampling) at the same
# hyperparameters; rewrites its marked section of docs/results.md (~10 min).
bench-exact: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[sklearn]"
	$(BIN)/python benchmarks/bench_exact_posterior.py

# iris, wine, digits and letter: ngvi's multi-class GPC vs scikit-learn's one-vs-rest Laplace;
# rewrites its own marked section of docs/results.md.
bench-multiclass: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[sklearn]"
	$(BIN)/python benchmarks/bench_multiclass.py

# Steps per second of the sharded sparse fit at 1, 2 and 4 emulated CPU devices.
bench-scale-out: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_scale_out.py

lint: $(VENV)/.installed
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check ngvi tests examples benchmarks tools

clean:
	rm -rf $(VENV) demo-output site
