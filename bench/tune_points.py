"""Given points trained as bench.tune trains its winner, for the time its winner gets: which model the budget suits.

    python -m bench.tune_points --stateful --mixed-precision   # bench/tune_start_wide.json, bench/tune_start.json
    python -m bench.tune_points --stateful --mixed-precision --minutes 12 --points my_point.json --set dropout=0.4
bench.tune judges points by short trials (--trial-minutes), which favour models that learn fast, then trains
the winner for the rest of the budget. This bench answers the other question: trained for that rest (by
default the 12 minutes of bench.tune's 20-minute budget after its 40 % search), on the same data and with the
same recipe flags (bench.tune's own: stride, batch, AR/TAR, input dropout, weight averaging, schedule,
validation frequency, stateful, mixed precision), what does each point reach? Each point is a
best_hparams.json-style file; --set KEY=VALUE overrides a key of every point. One run after the other in one
process; JSON in bench/results/tune_points.json with each run's best window and stream perplexity, its
epochs, best epoch and training perplexity. With two points or more it also scores their ensemble (the models'
next-token probabilities averaged) on the same stream: how far more models, rather than a better one, go.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile

from pipeline import cli
from pipeline.cli import UserError
from bench.common import emit
from bench.common import ROOT
from bench.tune import START_POINT, add_recipe_arguments, prepare_data, recipe

WIDE_POINT = ROOT / "bench" / "tune_start_wide.json"  # a 3 × 256 LSTM


def parse_setting(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as JSON (numbers, strings in quotes) or else as a plain string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter,
                                     epilog=cli.examples_from(__doc__))
    parser.add_argument("--points", nargs="+", default=[str(WIDE_POINT), str(START_POINT)], metavar="JSON",
                        help="points to train (best_hparams.json's keys): default, a 3 × 256 LSTM "
                             "(bench/tune_start_wide.json) and bench.tune's start point, a 3 × 128 LSTM")
    parser.add_argument("--minutes", type=float, default=12.0,
                        help="wall-clock minutes of each run (bench.tune: budget × (1 - search fraction))")
    parser.add_argument("--set", type=parse_setting, nargs="*", default=[], metavar="KEY=VALUE",
                        help="override a key of every point, e.g. dropout=0.4 (default: none)")
    add_recipe_arguments(parser)
    return parser


def read_points(paths: list[str], overrides: dict) -> list[dict]:
    """Each file's point with the overrides, checked against TrainConfig now (exit 2 in one line, before any
    work)."""
    from trainer.config import TrainConfig
    from trainer.tune import HPARAM_KEYS

    points = []
    for path in paths:
        try:
            with open(path) as f:
                point = {k: v for k, v in json.load(f).items() if k in HPARAM_KEYS}
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"--points {path}: {err}") from None
        point.update(overrides)
        try:
            TrainConfig(**point)
        except (TypeError, ValueError) as err:
            raise UserError(f"--points {path}: {err}") from None
        points.append(point)
    return points


def ensemble_perplexity(token_losses: list) -> float:
    """Perplexity of the models' averaged next-token probabilities: per token, -log of the mean over the models
    of exp(-loss), from each model's per-token losses in nats ([models] arrays over the same tokens)."""
    import numpy as np

    losses = np.stack([np.asarray(t, np.float64) for t in token_losses])    # [M, N]
    mixed = math.log(len(losses)) - np.logaddexp.reduce(-losses, axis=0)    # [N]
    return math.exp(mixed.mean())


def stream_token_losses(model_dir: str, streams: list):
    """A trained run's (its saved best model's) per-token losses over the given token streams, the state carried
    across each stream as training's stream validation does: [tokens] nats, the streams one after the other."""
    import numpy as np

    from serving.export import load_trained
    from trainer.config import ModelConfig
    from trainer.stateful import StreamScorer, carried_network

    model, _, run_config = load_trained(model_dir)
    scorer = StreamScorer(carried_network(ModelConfig(**run_config["model"]), weights_from=model))
    return np.concatenate(scorer.token_losses(streams))


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if not 0 < args.minutes < 10_000:
        raise UserError(f"--minutes must be in (0, 10000), got {args.minutes}")
    points = read_points(args.points, dict(args.set))
    base, _, final_schedule = recipe(args)
    from trainer.train import train_and_evaluate

    work = tempfile.mkdtemp()
    data, data_cfg, steps_per_epoch = prepare_data(work, args)
    runs = []
    for i, point in enumerate(points):
        result = train_and_evaluate(base.replace(**point, **final_schedule, steps_per_epoch=steps_per_epoch,
                                                 epochs=100000, time_limit_min=args.minutes),
                                    data, os.path.join(work, f"run_{i}"))
        runs.append({"point": point,
                     **{k: float(result[k]) for k in ("best_val_ppl", "best_val_stream_ppl", "epochs", "best_epoch",
                                                      "train_ppl", "wall_s", "num_params")}})
    ensemble = None
    if len(runs) >= 2:
        from trainer.data import load_data_info, split_streams

        streams = split_streams(load_data_info(data), "valid")  # read once, scored by every model
        losses = [stream_token_losses(os.path.join(work, f"run_{i}"), streams) for i in range(len(runs))]
        ensemble = {"members": len(runs), "member_stream_ppl": [math.exp(t.mean()) for t in losses],
                    "stream_ppl": ensemble_perplexity(losses)}
    emit("tune_points", {
        "data": f"timemachine, holdout split, num_steps {data_cfg.num_steps}, windows every {data_cfg.window_stride} "
                f"tokens",
        "minutes": args.minutes, "steps_per_epoch": steps_per_epoch,
        "recipe": {k: getattr(base, k) for k in ("batch_size", "stateful", "mixed_precision", "input_dropout", "ar",
                                                 "tar", "ema")} | final_schedule,
        "runs": runs,
        # every point's saved model, next-token probabilities averaged, on the validation stream
        "ensemble": ensemble})


if __name__ == "__main__":
    cli.run_main(main)
