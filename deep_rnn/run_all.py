"""The main job (`make pipeline`): preprocess → [tune] → train → export → serve → query → report.

Each stage runs as its own command (the same CLI a user would type), reads only the previous
stage's directory, and is skipped when its inputs have not changed, so a re-run after success
takes seconds. Knobs: defaults < pipeline.yaml < flags; the effective config is saved in RUN_DIR.
"""
from __future__ import annotations

import json
import os
import sys

from common import cli
from common.cli import UserError
from deep_rnn.orchestrate import DEFAULTS, die_with_parent, run_pipeline
from pipeline import sources

KNOB_HELP = {  # one line per knob: what it does (the Make variable in brackets); defaults are added by --help
    "corpus": "paths, globs or named corpora (" + ", ".join(sources.NAMED_CORPORA) + ") [CORPUS]",
    "run_dir": "where data/, tuning/, model/, export/, logs/ and report.md go [RUN_DIR]",
    "normalize": "text normaliser: d2l (the book's letters-only lower case) or none [NORMALIZE]",
    "tokenizer": "char or word [TOKENIZER]",
    "split": "d2l (the book's random windows) or holdout (each source's last 10%% validates) [SPLIT]",
    "num_steps": "tokens of context per training window [NUM_STEPS]",
    "encoding": "text encoding: auto (UTF-8, else detected per file) or a codec such as cp1252 [ENCODING]",
    "strip_boilerplate": "Project Gutenberg header/footer: auto (removed where present), gutenberg or none [STRIP]",
    "runner": "Beam runner for preprocessing [RUNNER]",
    "beam_options": "extra Beam pipeline options, one string [BEAM_OPTS]",
    "cell": "gru, lstm, rnn or scratch [CELL]",
    "num_layers": "stacked recurrent layers [LAYERS]",
    "num_hiddens": "units per layer [HIDDENS]",
    "epochs": "training epochs; more epochs later resume the same run [EPOCHS]",
    "batch_size": "windows per training step [BATCH]",
    "lr": "learning rate [LR]",
    "optimizer": "sgd or adam [OPTIMIZER]",
    "tune": "run trainer.tune first and train its best point (1/0) [TUNE]",
    "tuner": "hyperband, random or bayesian [TUNER]",
    "max_trials": "tuning trials (random/bayesian) [MAX_TRIALS]",
    "time_budget": "tuning minutes [TIME_BUDGET]",
    "tune_max_epochs": "epochs of the longest tuning trial [TUNE_EPOCHS]",
    "tune_options": "extra trainer.tune flags, one string [TUNE_OPTS]",
    "model_name": "the served model's name [MODEL_NAME]",
    "grpc_port": "gRPC port of the server started for the queries (0: any free port) [GRPC_PORT]",
    "rest_port": "REST port of that server (0: any free port) [REST_PORT]",
}


EXAMPLES = """examples (make pipeline passes Make variables as these flags):
  python -m deep_rnn.run_all                                  # the book's deep GRU on The Time Machine
  python -m deep_rnn.run_all --run-dir runs/lstm --cell lstm --num-layers 3 --num-hiddens 256 --epochs 20
  python -m deep_rnn.run_all --tune 1 --time-budget 20 --run-dir runs/tuned
  python -m deep_rnn.run_all --corpus '../shared/data/books/*.txt' --split holdout --run-dir runs/books

Each stage's full output is in RUN_DIR/logs/<stage>.log; the console shows its progress and result."""


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="deep_rnn.run_all", description=__doc__.split("\n")[0], epilog=EXAMPLES)
    p.add_argument("--config", metavar="YAML",
                   help="file of knobs, keys as the flags below with _ (default: ./pipeline.yaml if present)")
    p.add_argument("--corpus", nargs="+", metavar="SRC", help=KNOB_HELP["corpus"] + " (default: timemachine)")
    for name, value in DEFAULTS.items():
        if name in ("corpus",):
            continue
        flag = "--" + name.replace("_", "-")
        shown = f" (default: {value!r})" if isinstance(value, str) else f" (default: {value})"
        if isinstance(value, bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes", "on"), metavar="0|1",
                           help=KNOB_HELP[name] + shown)
        else:
            p.add_argument(flag, type=type(value), help=KNOB_HELP[name] + shown)
    return p


def parse_args(argv):
    p = build_parser()
    args = p.parse_args(argv)
    config = dict(DEFAULTS)
    path = args.config or ("pipeline.yaml" if os.path.exists("pipeline.yaml") else None)
    if path:
        import yaml

        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"{path}: cannot read config: {err}") from None
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise UserError(f"{path}: unknown keys {', '.join(unknown)}")
        config.update(loaded)
    config.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    corpus = [config["corpus"]] if isinstance(config["corpus"], str) else config["corpus"]
    config["corpus"] = [src for item in corpus for src in item.split()]  # Make passes one string
    return config


def main(argv=None) -> None:
    die_with_parent()  # killed with `make` (SIGKILL included): no orphan run racing the rerun
    cfg = parse_args(argv)
    print("pipeline configuration: " + json.dumps(cfg), flush=True)
    run_pipeline(cfg)


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
