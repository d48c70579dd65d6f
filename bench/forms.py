"""Training speed of the three model forms (cell stack, one Keras layer per depth, fused) on this device.

    python -m bench.forms [--sizes 2x256 3x1024] [--cells gru lstm] [--mixed-precision]
On a GPU the `layers` form is the cuDNN one (the script records whether CudnnRNN ops ran); on a CPU the
`fused` form is the one `--backend-form auto` picks. Synthetic token ids (speed does not depend on the
text), batch 64 × 64 steps, Adam; a few warm-up steps, then timed `train_on_batch` steps.
"""
from __future__ import annotations

import argparse
import time

from bench.common import emit

FORMS = ("stacked", "layers", "fused")


def uses_cudnn(model) -> bool:
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=True))
    graph = fn.get_concrete_function(tf.TensorSpec([2, 8], tf.int32)).graph
    types = {op.type for op in graph.get_operations()}
    types |= {op.type for f in graph._functions.values() for op in f.graph.get_operations()}
    return any("CudnnRNN" in t for t in types)


def time_form(cell: str, layers: int, hiddens: int, form: str, batch: int, num_steps: int, vocab: int,
              steps: int, warmup: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from trainer.config import ModelConfig, TrainConfig
    from trainer.model import build_model
    from trainer.train import compile_model

    cfg = TrainConfig(cell=cell, num_layers=layers, num_hiddens=hiddens, batch_size=batch, optimizer="adam",
                      lr=1e-3)
    model = compile_model(build_model(ModelConfig(vocab, cell, layers, hiddens, form=form)), cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, size=(steps + warmup, batch, num_steps + 1), dtype=np.int32)
    batches = [(tf.constant(b[:, :-1]), tf.constant(b[:, 1:])) for b in ids]
    for x, y in batches[:warmup]:  # trace and warm up
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for x, y in batches[warmup:]:
        loss = model.train_on_batch(x, y)
    float(loss[0] if isinstance(loss, list) else loss)  # wait for the last step
    seconds = time.perf_counter() - start
    return {"cell": cell, "size": f"{layers}x{hiddens}", "form": form, "params": int(model.count_params()),
            "train_tokens_per_s": steps * batch * num_steps / seconds, "ms_per_step": 1e3 * seconds / steps,
            "cudnn": uses_cudnn(model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", help="LAYERSxHIDDENS (default: 2x256 3x1024 on a GPU, 2x256 on a CPU)")
    parser.add_argument("--cells", nargs="+", default=["gru", "lstm"])
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--num-steps", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mixed-precision", action="store_true", help="mixed_float16 on GPU")
    args = parser.parse_args()
    import keras
    import tensorflow as tf

    from trainer.model import resolve_form

    gpus = tf.config.list_physical_devices("GPU")
    sizes = args.sizes or (["2x256", "3x1024"] if gpus else ["2x256"])
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    rows = []
    for size in sizes:
        layers, hiddens = (int(x) for x in size.lower().split("x"))
        for cell in args.cells:
            for form in args.forms:
                rows.append(time_form(cell, layers, hiddens, form, args.batch, args.num_steps, args.vocab,
                                      args.steps, args.warmup))
                print(rows[-1], flush=True)
    emit("forms", {"device": "GPU" if gpus else "CPU", "auto_form": resolve_form("auto", "gru"),
                   "mixed_precision": args.mixed_precision, "batch": args.batch, "num_steps": args.num_steps,
                   "vocab": args.vocab, "rows": rows})


if __name__ == "__main__":
    main()
