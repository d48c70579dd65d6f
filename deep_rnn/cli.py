"""The `deep-rnn` command: every stage as a sub-command taking the same flags as its `python -m` form.

    deep-rnn pipeline --epochs 20                      # the whole job, as `make pipeline`
    deep-rnn preprocess --corpus timemachine --output runs/x/data
    deep-rnn train --data runs/x/data --model-dir runs/x/model
    deep-rnn train --help                              # any stage's own options
"""
from __future__ import annotations

import runpy
import sys

# sub-command → (module run as __main__, what it does); the modules are run, not imported (runpy)
COMMANDS = {
    "pipeline": ("deep_rnn.run_all", "the main job: preprocess → [tune] → train → export → serve → query → report"),
    "preprocess": ("pipeline.preprocess", "corpora → TFRecord windows + vocabulary (Apache Beam)"),
    "tune": ("trainer.tune", "KerasTuner search over depth × width → best_hparams.json"),
    "train": ("trainer.train", "train (or resume) a deep RNN → model.keras, checkpoints, metrics"),
    "export": ("serving.export", "model.keras → SavedModel version for TensorFlow Serving"),
    "serve": ("serving.server", "serve exports with TF Serving's gRPC and REST APIs (local stand-in)"),
    "client": ("serving.client", "query a served model over gRPC: generate or score text"),
    "evaluate": ("deep_rnn.evaluate", "perplexity of a model or export on any texts, per source"),
    "kernels": ("trainer.build_kernels", "build the native form's C++ kernels for this CPU"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: deep-rnn COMMAND [options]   (deep-rnn COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: deep-rnn: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"deep-rnn {name}", *rest]
    runpy.run_module(COMMANDS[name][0], run_name="__main__", alter_sys=True)
