"""Where a training step's time goes: TensorFlow op time by op type for the book's deep GRU.

    python -m bench.train_profile [--steps 10] [--form auto]
Profiles `train_on_batch` on one batch of the book's shape (1024 × 35 tokens, vocabulary 28, 2 × 32
GRU, SGD with clipping, the trainer's own loss and metrics) with tf.profiler, then sums the host
plane's op events by type. Random token ids: op times do not depend on the values. Also times the
trainer's loss against TF's fused sparse cross-entropy kernel on logits of the same shape.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import tempfile
import time

from common import cli

_ONEDNN_LAYOUT_OPS = ("_MklToTf", "_MklInputConversion")  # oneDNN's own layout conversions: no TF op behind them


def tf_op_type(op_type: str) -> str:
    """The TF op a oneDNN graph rewrite replaced: `_MklMatMul` → `MatMul`, `_MklNativeFusedMatMul` → `_FusedMatMul`.

    With oneDNN on (the default on Intel CPUs with AVX-512), grappler's MKL layout pass renames ops in the
    executed graph, so the profiler records `MatMul:_MklMatMul`; other CPUs record `MatMul:MatMul`.
    """
    if not op_type.startswith("_Mkl") or op_type in _ONEDNN_LAYOUT_OPS:
        return op_type
    base = op_type[len("_Mkl"):]
    base = base[len("Native"):] if base.startswith("Native") else base
    return "_" + base if base.startswith("Fused") else base


def op_times(logdir: str) -> tuple[collections.Counter, collections.Counter]:
    """(op type → total ms, op type → count) over the TF op events of the host plane, oneDNN names mapped back."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    millis, counts = collections.Counter(), collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                # ops are "node_name:OpType"; runtime events are "Class::Method" or "EagerLocalExecute: Op"
                if ":" not in name or "::" in name or ": " in name:
                    continue
                op_type = tf_op_type(name.rsplit(":", 1)[1])
                millis[op_type] += event.duration_ps / 1e9
                counts[op_type] += 1
    return millis, counts


def loss_kernel_ms(batch: int, steps: int, vocab: int, repeats: int = 30) -> dict:
    """Forward + backward ms of the trainer's token_cross_entropy (standard ops, and fused: the native kernels'
    op, where they load) and of TF's fused sparse kernel."""
    import tensorflow as tf

    from trainer import native
    from trainer.metrics import token_cross_entropy

    logits = tf.random.normal((batch, steps, vocab))
    labels = tf.random.uniform((batch, steps), 0, vocab, tf.int32)
    kernels = {"token_cross_entropy": lambda z: token_cross_entropy(labels, z),
               "sparse_softmax_cross_entropy_with_logits":
                   lambda z: tf.nn.sparse_softmax_cross_entropy_with_logits(labels, z)}
    if native.available()[0]:
        kernels["token_cross_entropy (fused, native form)"] = lambda z: token_cross_entropy(labels, z, fused=True)
    out = {}
    for name, kernel in kernels.items():
        @tf.function
        def loss_and_grad(z, kernel=kernel):
            with tf.GradientTape() as tape:
                tape.watch(z)
                loss = tf.reduce_mean(kernel(z))
            return loss, tape.gradient(loss, z)

        loss_and_grad(logits)
        start = time.perf_counter()
        for _ in range(repeats):
            result = loss_and_grad(logits)
        result[0].numpy()
        out[name] = 1e3 * (time.perf_counter() - start) / repeats
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter,
                                     epilog=cli.examples_from(__doc__))
    parser.add_argument("--steps", type=int, default=10, help="profiled training steps")
    parser.add_argument("--form", default="auto", help="trainer.train's --backend-form")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    import numpy as np
    import tensorflow as tf

    from bench.common import emit  # here, not at import: bench.common sets benchmark-only environment
    from trainer.config import TrainConfig
    from trainer.model import build_model
    from trainer.training import compile_model, configure_cpu_threads, model_config_for, resolved_form

    # the book's defaults: 2 × 32 GRU, batch 1024, SGD lr 2, clip 1; its vocabulary has 28 tokens
    cfg = TrainConfig.from_flat(progress="none", form=args.form)
    configure_cpu_threads(cfg, resolved_form(cfg))
    model_cfg = model_config_for(cfg, 28)
    form = model_cfg.form
    model = compile_model(build_model(model_cfg), cfg)
    rng = np.random.default_rng(0)
    x, y = (tf.constant(rng.integers(0, 28, (cfg.run.batch_size, 35)), tf.int32) for _ in range(2))
    for _ in range(3):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    unprofiled_ms = 1e3 * (time.perf_counter() - start) / args.steps

    logdir = tempfile.mkdtemp()
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    profiled_ms = 1e3 * (time.perf_counter() - start) / args.steps
    tf.profiler.experimental.stop()
    millis, counts = op_times(logdir)
    total = sum(millis.values())
    losses = loss_kernel_ms(cfg.run.batch_size, 35, 28)
    emit("train_profile", {
        "model": f"{cfg.model.cell} {cfg.model.num_layers} x {cfg.model.num_hiddens}, form {form}, "
                 f"batch {cfg.run.batch_size} x 35",
        "ms_per_step": unprofiled_ms, "tokens_per_s": cfg.run.batch_size * 35 / unprofiled_ms * 1e3,
        "ms_per_step_profiled": profiled_ms,
        "op_ms_per_step": total / args.steps,
        "ops_per_step": sum(counts.values()) / args.steps,
        "cores_busy": total / args.steps / profiled_ms,
        "by_op_type": [{"op": op, "ms_per_step": ms / args.steps, "share": ms / total,
                        "per_step": counts[op] / args.steps} for op, ms in millis.most_common(12)],
        "loss_fwd_bwd_ms": losses,
    })


if __name__ == "__main__":
    main()
