# Two commands do all the set-up: `make pipeline` (main job) and `make test`.
# Every knob is a Make variable: make pipeline EPOCHS=20 LAYERS=3 HIDDENS=256
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

CORPUS ?= timemachine
RUN_DIR ?= runs/default
NORMALIZE ?= d2l
TOKENIZER ?= char
SPLIT ?= d2l
NUM_STEPS ?= 32
RUNNER ?= DirectRunner
BEAM_OPTS ?=
CELL ?= gru
LAYERS ?= 2
HIDDENS ?= 32
EPOCHS ?= 100
BATCH ?= 1024
LR ?= 2
OPTIMIZER ?= sgd
TUNE ?= 0
TUNER ?= hyperband
MAX_TRIALS ?= 10
TIME_BUDGET ?= 20
MODEL_NAME ?= deep_rnn
GRPC_PORT ?= 8500
REST_PORT ?= 8501
PYTEST_ARGS ?=

export PYTHONUNBUFFERED := 1
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv pipeline test test-fast test-reliability bench serve clean clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

pipeline: $(STAMP)
	$(PY) -m pipeline.run_all --corpus $(CORPUS) --run-dir $(RUN_DIR) \
	  --normalize $(NORMALIZE) --tokenizer $(TOKENIZER) --split $(SPLIT) --num-steps $(NUM_STEPS) \
	  --runner $(RUNNER) --beam-options "$(BEAM_OPTS)" \
	  --cell $(CELL) --num-layers $(LAYERS) --num-hiddens $(HIDDENS) --epochs $(EPOCHS) \
	  --batch-size $(BATCH) --lr $(LR) --optimizer $(OPTIMIZER) \
	  --tune $(TUNE) --tuner $(TUNER) --max-trials $(MAX_TRIALS) --time-budget $(TIME_BUDGET) \
	  --model-name $(MODEL_NAME) --grpc-port $(GRPC_PORT) --rest-port $(REST_PORT)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not reliability" $(PYTEST_ARGS)

test-reliability: $(STAMP)
	$(PY) -m pytest -q -m reliability $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench.run_all

serve: $(STAMP)
	@if command -v tensorflow_model_server >/dev/null; then \
	  tensorflow_model_server --port=$(GRPC_PORT) --rest_api_port=$(REST_PORT) \
	    --model_config_file=$(abspath $(RUN_DIR))/export/models.config; \
	else \
	  echo "tensorflow_model_server not on PATH: serving with the local stand-in (serving.server)"; \
	  $(PY) -m serving.server --model-base $(RUN_DIR)/export/$(MODEL_NAME) --model-name $(MODEL_NAME) \
	    --port $(GRPC_PORT) --rest-port $(REST_PORT); \
	fi

clean:
	rm -rf $(RUN_DIR)

clean-venv:
	rm -rf $(VENV)
