"""Training stage entry point: RUN/data → RUN/model (model.keras, checkpoints, metrics, curves).

    python -m trainer.train --data runs/x/data --model-dir runs/x/model [--cell gru --num-layers 2 ...]
Killed at any point, the same command resumes from the last finished epoch.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from common import cli, config
from common.cli import UserError
from trainer.config import SECTIONS, TrainConfig
from trainer.training import train_and_evaluate

EXAMPLES = """examples:
  python -m trainer.train --data runs/default/data --model-dir runs/default/model          # the book's 2 x 32 GRU
  python -m trainer.train --data runs/default/data --model-dir runs/lstm --cell lstm --num-layers 3 \\
      --num-hiddens 256 --optimizer adam --lr 0.003 --dropout 0.2 --epochs 20
  python -m trainer.train --data runs/default/data --model-dir runs/tuned \\
      --hparams runs/default/tuning/best_hparams.json

Run it again with the same --model-dir (and more --epochs) to resume; a changed vocabulary or architecture is refused.
Every setting is --section.field or its plain name (--num-layers 3); --quiet is --run.progress epoch;
--config MODEL_DIR/config.yaml repeats a run."""


RENAMES = {"backend-form": "model.form"}  # flags whose name differs from their field's
FLAGS = {"quiet": "run.progress=epoch"}  # flags that take no value


def build_parser():
    p = config.make_parser("trainer.train", __doc__.split("\n")[0], EXAMPLES, SECTIONS)
    p.add_argument("--data", required=True, metavar="DIR", help="output directory of pipeline.preprocess")
    p.add_argument("--model-dir", required=True, metavar="DIR",
                   help="where checkpoints, history.csv, metrics.json and model.keras go (resumed when it exists)")
    p.add_argument("--hparams", metavar="JSON",
                   help="file of hyperparameters by their plain names (trainer.tune's best_hparams.json); "
                        "--config and flags override it")
    return p


def parse_args(argv: Sequence[str] | None):
    """(paths, TrainConfig): defaults < --hparams file < --config file < flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    hparams = config.pop_value(argv, "--hparams", remove=False)
    defaults = None
    if hparams:
        values = cli.read_json(hparams, "hyperparameters")
        try:
            TrainConfig.from_flat(**values)  # the file's own types and ranges, before flags may override them
        except (TypeError, ValueError) as err:
            raise UserError(f"{hparams}: {err}") from None
        defaults = config.flat_defaults(values, SECTIONS)
    parser = build_parser()
    args, sections = config.parse(parser, argv, SECTIONS, RENAMES, FLAGS, defaults)
    try:
        return args, TrainConfig(**sections)
    except (TypeError, ValueError) as err:
        raise UserError(str(err)) from None


def main(argv: Sequence[str] | None = None) -> None:
    args, cfg = parse_args(argv)
    metrics = train_and_evaluate(cfg, args.data, args.model_dir)
    print(f"train: {metrics['epochs']} epochs, train perplexity {metrics['train_ppl']:.2f}, validation perplexity "
          f"{metrics['val_ppl']:.2f} (best {metrics['best_val_ppl']:.2f} at epoch {metrics['best_epoch']}), "
          f"{metrics['train_tokens_per_s'] / 1e6:.2f} M tokens/s, {metrics['wall_s']:.0f} s → {args.model_dir}")
    print(f"sample: {metrics['sample']}")


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
