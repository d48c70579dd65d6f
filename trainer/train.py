"""Training stage entry point: RUN/data → RUN/model (model.keras, checkpoints, metrics, curves).

    python -m trainer.train --data runs/x/data --model-dir runs/x/model [--cell gru --num-layers 2 ...]
Killed at any point, the same command resumes from the last finished epoch.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from common import cli
from common.cli import UserError
from trainer.config import CELLS, FORMS, LR_SCHEDULES, OPTIMIZERS, TrainConfig
from trainer.training import PROGRESS, train_and_evaluate

EXAMPLES = """examples:
  python -m trainer.train --data runs/default/data --model-dir runs/default/model          # the book's 2 x 32 GRU
  python -m trainer.train --data runs/default/data --model-dir runs/lstm --cell lstm --num-layers 3 \\
      --num-hiddens 256 --optimizer adam --lr 0.003 --dropout 0.2 --epochs 20
  python -m trainer.train --data runs/default/data --model-dir runs/tuned \\
      --hparams runs/default/tuning/best_hparams.json

Run it again with the same --model-dir (and more --epochs) to resume; a changed vocabulary or architecture is refused.
Unset flags take --hparams' value, then the default shown."""


def _default(name: str) -> str:
    """TrainConfig's default for a field, for help texts (flags default to None so --hparams can fill them)."""
    return f"(default: {TrainConfig.__dataclass_fields__[name].default})"


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="trainer.train", description=__doc__.split("\n")[0], epilog=EXAMPLES)
    p.add_argument("--data", required=True, metavar="DIR", help="output directory of pipeline.preprocess")
    p.add_argument("--model-dir", required=True, metavar="DIR",
                   help="where checkpoints, history.csv, metrics.json and model.keras go (resumed when it exists)")
    p.add_argument("--hparams", metavar="JSON",
                   help="file of hyperparameters (e.g. trainer.tune's best_hparams.json); flags override it")
    p.add_argument("--cell", choices=CELLS,
                   help="recurrent cell; scratch is the book's from-scratch tanh RNN cell " + _default("cell"))
    p.add_argument("--num-layers", type=int, metavar="L", help="stacked recurrent layers " + _default("num_layers"))
    p.add_argument("--num-hiddens", type=int, metavar="H", help="units per layer " + _default("num_hiddens"))
    p.add_argument("--dropout", type=float, metavar="P",
                   help="dropout between layers and before the output " + _default("dropout"))
    p.add_argument("--weight-drop", type=float, metavar="P",
                   help="DropConnect on the recurrent kernels (AWD-LSTM's weight drop), one mask per batch; "
                        "runs in the fused and native forms (auto picks one) " + _default("weight_drop"))
    p.add_argument("--input-dropout", type=float, metavar="P",
                   help="drop whole input characters: per sequence, each character type is zeroed at every step "
                        "with probability P (AWD-LSTM's embedding dropout) " + _default("input_dropout"))
    p.add_argument("--ar", type=float, metavar="ALPHA",
                   help="activation regularisation (AWD-LSTM's AR): ALPHA · mean(h²) of the top layer's outputs "
                        "added to the training loss " + _default("ar"))
    p.add_argument("--tar", type=float, metavar="BETA",
                   help="temporal activation regularisation (TAR): BETA · mean((h_t - h_t-1)²) of the top layer's "
                        "outputs " + _default("tar"))
    p.add_argument("--batch-size", type=int, metavar="N", help="windows per step " + _default("batch_size"))
    p.add_argument("--epochs", type=int, metavar="N", help="passes over the training windows " + _default("epochs"))
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=_default("optimizer"))
    p.add_argument("--lr", type=float, help="learning rate " + _default("lr"))
    p.add_argument("--clip-norm", type=float, metavar="C",
                   help="clip the global gradient norm to C; 0 turns clipping off " + _default("clip_norm"))
    p.add_argument("--seed", type=int, help="seed for weights, dropout and data order " + _default("seed"))
    p.add_argument("--backend-form", choices=("auto",) + FORMS,
                   help="how the layers run (same maths, same weights): auto picks the fastest that bench.forms "
                        "measured for this cell, width and device " + _default("backend_form"))
    p.add_argument("--distribute", choices=("none", "mirrored", "multi_worker"),
                   help="tf.distribute strategy; multi_worker reads TF_CONFIG " + _default("distribute"))
    p.add_argument("--mixed-precision", action="store_true", default=None,
                   help="bfloat16 on CPU, float16 on GPU, with the loss in float32 (default: off)")
    p.add_argument("--time-limit-min", type=float, metavar="MIN",
                   help="stop training after MIN minutes, keeping the epochs run (default: no limit)")
    p.add_argument("--steps-per-execution", type=int, metavar="N",
                   help="training steps per compiled call (Keras compile's steps_per_execution) "
                        + _default("steps_per_execution"))
    p.add_argument("--steps-per-epoch", type=int, metavar="N",
                   help="batches per epoch (default: one pass over the windows); the data repeats")
    p.add_argument("--reduce-lr-patience", type=int, metavar="N",
                   help="halve the learning rate after N validations without a better validation perplexity "
                        "(default: 0, never)")
    p.add_argument("--validation-freq", type=int, metavar="N",
                   help="validate (windows and streams) every N epochs, and the first and the last epoch; the best "
                        "checkpoint is the best validated epoch " + _default("validation_freq"))
    p.add_argument("--weight-decay", type=float, metavar="WD",
                   help="decoupled weight decay (needs --optimizer adamw) " + _default("weight_decay"))
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="constant, or a linear warm-up over --warmup-steps then cosine decay to lr / 10 at the "
                        "last step, or at --time-limit-min if that comes first " + _default("lr_schedule"))
    p.add_argument("--warmup-steps", type=int, metavar="N", help="warm-up steps of warmup_cosine "
                   + _default("warmup_steps"))
    p.add_argument("--stateful", action="store_true", default=None,
                   help="truncated backpropagation through time: each source's training text in --batch-size "
                        "contiguous lanes read in order, the state carried from batch to batch (reset at epoch "
                        "start and at each source); checkpoints keep the best val_stream_perplexity")
    p.add_argument("--ema", type=float, metavar="MOMENTUM",
                   help="Polyak averaging: validate, checkpoint and export an exponential moving average of the "
                        "weights with this momentum per step, e.g. 0.99 (0: off) " + _default("ema"))
    p.add_argument("--progress", choices=sorted(PROGRESS), default=None,
                   help="what to print while training: Keras's progress bar, one short line per epoch, or nothing "
                        "(default: bar)")
    p.add_argument("--quiet", action="store_true", help="the same as --progress epoch")
    return p


def parse_args(argv: Sequence[str] | None):
    args = build_parser().parse_args(argv)
    return args, config_from(args)


def config_from(args) -> TrainConfig:
    """Defaults < --hparams file < explicit flags."""
    values = {}
    if args.hparams:
        try:
            with open(args.hparams) as f:
                loaded = json.load(f)
        except (OSError, ValueError) as err:
            raise UserError(f"{args.hparams}: cannot read hyperparameters: {err}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{args.hparams}: must hold a JSON object of hyperparameters, not {type(loaded).__name__}")
        values.update(loaded)
    fields = TrainConfig.__dataclass_fields__
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"{args.hparams}: unknown hyperparameters {', '.join(unknown)}")
    for name in fields:
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    if args.progress or args.quiet:
        values["verbose"] = PROGRESS[args.progress or "epoch"]
    try:
        return TrainConfig(**values)
    except (TypeError, ValueError) as err:
        raise UserError(f"{args.hparams + ': ' if args.hparams else ''}{err}") from None


def main(argv: Sequence[str] | None = None) -> None:
    args, cfg = parse_args(argv)
    metrics = train_and_evaluate(cfg, args.data, args.model_dir)
    print(f"train: {metrics['epochs']} epochs, train perplexity {metrics['train_ppl']:.2f}, validation perplexity "
          f"{metrics['val_ppl']:.2f} (best {metrics['best_val_ppl']:.2f} at epoch {metrics['best_epoch']}), "
          f"{metrics['train_tokens_per_s'] / 1e6:.2f} M tokens/s, {metrics['wall_s']:.0f} s → {args.model_dir}")
    print(f"sample: {metrics['sample']}")


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
