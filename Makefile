# Two commands do all the set-up: `make pipeline` (main job) and `make test`.
# Every knob is a Make variable: make pipeline EPOCHS=20 LAYERS=3 HIDDENS=256
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Fixed, not a knob: bench.train_vs_d2l runs .venv-book/bin/python.
BOOK_VENV := .venv-book
BOOK_STAMP := $(BOOK_VENV)/.installed-stamp

# Pipeline knobs (make pipeline LAYERS=3 ...): Make hands its command-line variables to the job's environment,
# and deep_rnn.run_all reads the ones its settings declare (deep_rnn/settings.py KNOBS; `make help` lists them).
# Unset ones take pipeline.yaml's value, then the default.
RUN_DIR ?= runs/default
MODEL_NAME ?= deep_rnn
GRPC_PORT ?= 8500
REST_PORT ?= 8501
PYTEST_ARGS ?=

export PYTHONUNBUFFERED := 1
# Offline machines: named corpora found here are copied into the cache and hash-verified.
export DEEP_RNN_SEED_DIR ?= $(abspath ../shared/data)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help venv book-venv kernels lint pipeline test test-fast test-reliability bench study serve clean clean-venv

help:
	@echo "Targets (each creates .venv and installs pinned dependencies when needed):"
	@echo "  make pipeline        preprocess -> [tune] -> train -> export -> serve -> query -> report into RUN_DIR"
	@echo "  make test            the whole test suite (what CI runs via .ci/run); PYTEST_ARGS=... passes flags"
	@echo "  make test-fast       the suite without the slow and reliability tests"
	@echo "  make test-reliability  fault-injection tests only"
	@echo "  make bench           every benchmark in bench/, then bench/RESULTS.md"
	@echo "  make study           the chapter's exercises: bench.cells and bench.authors (~25 min), then RESULTS.md"
	@echo "  make serve           serve RUN_DIR's export: tensorflow_model_server if installed, else serving.server"
	@echo "  make book-venv       the book's own PyTorch environment (.venv-book, ~6 GB) for bench.train_vs_d2l's book side"
	@echo "  make kernels         build the native form's C++ kernels for this CPU (done by the targets above)"
	@echo "  make lint            ruff and the import contracts (part of make test)"
	@echo "  make clean           remove RUN_DIR;  make clean-venv: remove .venv and .venv-book"
	@echo ""
	@echo "Knobs (Make variables; unset ones take pipeline.yaml's value, then the default):"
	@if [ -x $(PY) ]; then $(PY) -m deep_rnn.run_all --knobs; else echo "  (make venv first to list them)"; fi
	@echo "  e.g. make pipeline CELL=lstm LAYERS=3 HIDDENS=256 EPOCHS=20 RUN_DIR=runs/lstm"
	@echo "Every setting, by section: .venv/bin/python -m deep_rnn.run_all --help"

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-dask.txt constraints.txt setup.py pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt -r requirements-dask.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

# The book's own code (d2l 1.0.3 on PyTorch) for bench.train_vs_d2l, apart from the project's environment.
book-venv: $(BOOK_STAMP)

$(BOOK_STAMP): bench/book/requirements.txt
	@test -x $(BOOK_VENV)/bin/python || $(PYTHON) -m venv $(BOOK_VENV)
	$(BOOK_VENV)/bin/python -m pip install -q -r bench/book/requirements.txt
	@touch $@

# The native form's C++ kernels, built for this CPU and TensorFlow into ~/.cache/deep_rnn/native (else on first use).
kernels: $(STAMP)
	@mkdir -p build && $(PY) -m trainer.build_kernels > build/kernels.log 2>&1 || { cat build/kernels.log; exit 1; }

pipeline: $(STAMP) kernels
	$(PY) -m deep_rnn.run_all --knobs-from-env

# The linter and the layout's import contracts (pyproject.toml); `make test` runs both as tests too.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: $(STAMP) kernels
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP) kernels
	$(PY) -m pytest -q -m "not slow and not reliability" $(PYTEST_ARGS)

test-reliability: $(STAMP)
	$(PY) -m pytest -q -m reliability $(PYTEST_ARGS)

bench: $(STAMP) kernels
	$(PY) -m bench.run_all

# The chapter's exercises (GRU/LSTM/RNN/scratch; more books and mixed authors): JSON, plots, RESULTS.md sections.
study: $(STAMP) kernels
	$(PY) -m bench.run_all --only cells authors

serve: $(STAMP)
	@if command -v tensorflow_model_server >/dev/null; then \
	  tensorflow_model_server --port=$(GRPC_PORT) --rest_api_port=$(REST_PORT) \
	    --model_config_file=$(abspath $(RUN_DIR))/export/models.config; \
	else \
	  echo "tensorflow_model_server not on PATH: serving with the local stand-in (serving.server)"; \
	  $(PY) -m serving.server --model-config-file $(abspath $(RUN_DIR))/export/models.config \
	    --port $(GRPC_PORT) --rest-port $(REST_PORT); \
	fi

clean:
	rm -rf $(RUN_DIR)

clean-venv:
	rm -rf $(VENV) $(BOOK_VENV)
