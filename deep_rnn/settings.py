"""The main job's settings: each stage's own config sections, gathered under one tree, plus the few that belong
to the job itself (inputs, run directory, Beam runner, whether to tune). `make pipeline`'s knobs, pipeline.yaml and
deep_rnn.run_all's flags all derive from these classes; each stage gets its resolved sections as a config file."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from common import config
from pipeline.transform import PreprocessConfig
from serving.settings import ServerConfig
from trainer.config import TrainConfig
from trainer.search import SearchConfig, SearchSpace


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """Job: the inputs and where everything goes"""

    corpus: tuple[str, ...] = ("timemachine",)
    """paths, globs or named corpora (timemachine)"""
    run_dir: str = "runs/default"
    """where data/, tuning/, model/, export/, logs/ and report.md go"""

    def __post_init__(self):
        corpus = (self.corpus,) if isinstance(self.corpus, str) else tuple(self.corpus)
        object.__setattr__(self, "corpus", tuple(src for item in corpus for src in item.split()))  # Make: one string
        if not self.corpus:
            raise ValueError("corpus names no input")
        if not self.run_dir:
            raise ValueError("run_dir is empty")


@dataclass(frozen=True, kw_only=True)
class BeamConfig:
    """Beam: the engine the preprocessing stage runs on"""

    runner: str = "FnApiRunner"
    """Beam runner, by Beam's name (FnApiRunner, DirectRunner, PortableRunner, FlinkRunner, ...) or class path"""
    options: str = ""
    """extra Beam pipeline options, one string (e.g. '--direct_num_workers=2 --direct_running_mode=multi_processing')"""


@dataclass(frozen=True, kw_only=True)
class TuneStageConfig:
    """Tune: whether the job searches before it trains, and how"""

    enabled: bool = False
    """run trainer.tune first and train its best point"""
    search: SearchConfig = field(default_factory=lambda: SearchConfig(max_trials=10, time_budget=20.0))
    space: SearchSpace = field(default_factory=lambda: SearchSpace(max_layers=4, max_hiddens=256))
    options: str = ""
    """extra trainer.tune flags, one string"""


SECTIONS = {"job": JobConfig, "data": PreprocessConfig, "beam": BeamConfig, "train": TrainConfig,
            "tune": TuneStageConfig, "serve": ServerConfig}
# the job's defaults where they differ from the stages' own: the book's split, one line per epoch and per trial
DEFAULTS = {"data.split": "d2l", "train.run.progress": "epoch", "tune.search.max_trials": 10,
            "tune.search.time_budget": 20.0, "tune.space.max_layers": 4, "tune.space.max_hiddens": 256}
# flags whose name differs from their field's (the job's older flat names)
RENAMES = {"beam-options": "beam.options", "tune-options": "tune.options", "tune": "tune.enabled",
           "tune-max-epochs": "tune.search.max_epochs", "grpc-port": "serve.port", "strip": "data.strip_boilerplate"}
# `make pipeline` knobs (Make variables) → the setting each sets
KNOBS = {"CORPUS": "job.corpus", "RUN_DIR": "job.run_dir", "NORMALIZE": "data.normalize",
         "TOKENIZER": "data.tokenizer", "SPLIT": "data.split", "NUM_STEPS": "data.num_steps",
         "ENCODING": "data.encoding", "STRIP": "data.strip_boilerplate", "RUNNER": "beam.runner",
         "BEAM_OPTS": "beam.options", "CELL": "train.model.cell", "LAYERS": "train.model.num_layers",
         "HIDDENS": "train.model.num_hiddens", "EPOCHS": "train.run.epochs", "BATCH": "train.run.batch_size",
         "LR": "train.optimiser.lr", "OPTIMIZER": "train.optimiser.optimizer", "TUNE": "tune.enabled",
         "TUNER": "tune.search.tuner", "MAX_TRIALS": "tune.search.max_trials",
         "TIME_BUDGET": "tune.search.time_budget", "TUNE_EPOCHS": "tune.search.max_epochs",
         "TUNE_OPTS": "tune.options", "MODEL_NAME": "serve.model_name", "GRPC_PORT": "serve.port",
         "REST_PORT": "serve.rest_port"}


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """The whole job's resolved settings."""

    job: JobConfig
    data: PreprocessConfig
    beam: BeamConfig
    train: TrainConfig
    tune: TuneStageConfig
    serve: ServerConfig

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def knob_arguments(environ=os.environ) -> list[str]:
    """`--key=value` for every knob set in the environment (Make exports its command-line variables); a list
    setting's knob holds its items separated by spaces (CORPUS="a.txt b.txt")."""
    kinds = {key: config.kind(hint) for key, hint in config.leaves(SECTIONS).items()}
    arguments = []
    for knob, key in KNOBS.items():
        value = environ.get(knob, "")
        if value != "":
            arguments.append(f"--{key}={json.dumps(value.split()) if kinds[key] == 'list' else value}")
    return arguments
