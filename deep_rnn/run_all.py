"""The main job (`make pipeline`): preprocess → [tune] → train → export → serve → query → report.

Each stage runs as its own command (the same CLI a user would type), reads only the previous
stage's directory, and is skipped when its inputs have not changed, so a re-run after success
takes seconds. Knobs: defaults < pipeline.yaml < flags; the effective config is saved in RUN_DIR.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap

import yaml

from common import cli, config
from common.cli import UserError
from deep_rnn.orchestrate import die_with_parent, run_pipeline
from deep_rnn.settings import DEFAULTS, KNOBS, RENAMES, SECTIONS, PipelineConfig, knob_arguments

EXAMPLES = """examples (make pipeline passes Make variables as these flags):
  python -m deep_rnn.run_all                                  # the book's deep GRU on The Time Machine
  python -m deep_rnn.run_all --run-dir runs/lstm --cell lstm --num-layers 3 --num-hiddens 256 --epochs 20
  python -m deep_rnn.run_all --tune 1 --time-budget 20 --run-dir runs/tuned
  python -m deep_rnn.run_all --corpus '../shared/data/books/*.txt' --split holdout --run-dir runs/books

Each stage's full output is in RUN_DIR/logs/<stage>.log; the console shows its progress and result."""


def build_parser():
    parser = config.make_parser("deep_rnn.run_all", __doc__.split("\n")[0], EXAMPLES, SECTIONS)
    parser.set_defaults(DEFAULTS)
    return parser


def parse_args(argv) -> PipelineConfig:
    """defaults < the job's own defaults < pipeline.yaml (or --config FILE) < Make knobs < flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = config.pop_value(argv, "--config") or ("pipeline.yaml" if os.path.exists("pipeline.yaml") else None)
    knobs = knob_arguments() if _pop_flag(argv, "--knobs-from-env") else []
    from_file = yaml_arguments(path) if path else []
    _, sections = config.parse(build_parser(), [*from_file, *knobs, *argv], SECTIONS, RENAMES, defaults=DEFAULTS)
    return PipelineConfig(**sections)


def yaml_arguments(path: str) -> list[str]:
    """A pipeline.yaml as flags: keys nested by section (as config.yaml in a run directory holds them), or the
    plain names of earlier versions (num_layers: 3)."""
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f.read(1 << 20)) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read config: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: must hold a mapping of settings, not {type(loaded).__name__}")
    known = config.leaves(SECTIONS)
    names = config.aliases(SECTIONS, RENAMES)
    flags = []
    for key, value in _flatten(loaded):
        target = key if key in known else names.get(key.replace("-", "_")) or names.get(key)
        if target is None:
            raise UserError(f"{path}: unknown setting {key!r}")
        flags.append(f"--{target}={json.dumps(value) if isinstance(value, (list, tuple, bool)) else value}")
    return flags


def _flatten(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    items = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and (prefix or key in SECTIONS):
            items += _flatten(value, name + ".")
        else:
            items.append((name, value))
    return items


def _pop_flag(argv: list[str], flag: str) -> bool:
    if flag in argv:
        argv.remove(flag)
        return True
    return False


def knob_table() -> str:
    """`make help`'s list: each knob, the setting it sets, its default and its help, from the config classes."""
    parser = build_parser()
    defaults = parser.get_defaults()
    helps = {action.dest: action.help for action in parser._actions}  # argparse keeps each flag's help here
    lines = []
    for knob, key in KNOBS.items():
        default = defaults.get(key)
        shown = " ".join(default) if isinstance(default, (list, tuple)) else default
        what = textwrap.shorten(helps.get(key) or "", 64, placeholder=" …")
        lines.append(f"  {knob:<12} --{key:<28} {str(shown):<14} {what}")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--knobs"]:
        print(knob_table())
        return
    die_with_parent()  # killed with `make` (SIGKILL included): no orphan run racing the rerun
    cfg = parse_args(argv)
    run_pipeline(cfg)


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
