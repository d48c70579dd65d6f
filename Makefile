# Two commands do all the set-up: `make pipeline` (main job) and `make test`.
# Every knob is a Make variable: make pipeline EPOCHS=20 LAYERS=3 HIDDENS=256
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# Pipeline knobs: unset ones take pipeline.yaml's value, then pipeline.run_all's default.
RUN_DIR ?= runs/default
KNOBS := CORPUS=corpus RUN_DIR=run-dir NORMALIZE=normalize TOKENIZER=tokenizer SPLIT=split NUM_STEPS=num-steps \
  RUNNER=runner BEAM_OPTS=beam-options CELL=cell LAYERS=num-layers HIDDENS=num-hiddens EPOCHS=epochs \
  BATCH=batch-size LR=lr OPTIMIZER=optimizer TUNE=tune TUNER=tuner MAX_TRIALS=max-trials \
  TIME_BUDGET=time-budget TUNE_EPOCHS=tune-max-epochs TUNE_OPTS=tune-options MODEL_NAME=model-name GRPC_PORT=grpc-port REST_PORT=rest-port
KNOB_FLAGS = $(foreach k,$(KNOBS),$(if $($(firstword $(subst =, ,$(k)))),--$(lastword $(subst =, ,$(k)))="$($(firstword $(subst =, ,$(k))))"))
MODEL_NAME ?= deep_rnn
GRPC_PORT ?= 8500
REST_PORT ?= 8501
PYTEST_ARGS ?=

export PYTHONUNBUFFERED := 1
# Offline machines: named corpora found here are copied into the cache and hash-verified.
export DEEP_RNN_SEED_DIR ?= $(abspath ../shared/data)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv kernels pipeline test test-fast test-reliability bench serve clean clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

# The native form's C++ kernels, built for this CPU and TensorFlow (a moved checkout builds its own).
kernels: $(STAMP)
	@$(PY) -m trainer.native >/dev/null

pipeline: $(STAMP) kernels
	$(PY) -m pipeline.run_all $(KNOB_FLAGS)

test: $(STAMP) kernels
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP) kernels
	$(PY) -m pytest -q -m "not slow and not reliability" $(PYTEST_ARGS)

test-reliability: $(STAMP)
	$(PY) -m pytest -q -m reliability $(PYTEST_ARGS)

bench: $(STAMP) kernels
	$(PY) -m bench.run_all

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
	rm -rf $(VENV)
