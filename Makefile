# Quick start: `make demo` (set up, then run the demo) and `make test` (set up, then run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BENCH_VENV ?= .venv-bench

.PHONY: demo test setup lesson bench-env clean

# No pip wheel cache: the CUDA build of torch and TensorFlow would otherwise sit on disk twice (as
# downloaded wheels and installed); a CI run once failed with 'No space left on device' while installing.
export PIP_NO_CACHE_DIR := 1

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/cxrlab demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# The lesson notebooks in JupyterLab (the [lesson] extra); they write their data and runs to notebooks/lesson-work/
$(BIN)/.lesson: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[dev,lesson]'
	touch $@

lesson: $(BIN)/.lesson
	cd notebooks && ../$(BIN)/jupyter lab 01_data.ipynb

# The Keras reference of benchmarks/speed.py: TensorFlow and the [bench] extra's packages in their own
# environment (cxrlab itself is not installed there; the reference imports nothing from it).
$(BENCH_VENV)/bin/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q $$($(PYTHON) -c "import tomllib; print(' '.join(\
		tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['bench']))")
	touch $@

bench-env: $(BENCH_VENV)/bin/.installed

clean:
	rm -rf $(VENV) $(BENCH_VENV) cxrlab-demo
