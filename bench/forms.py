"""Training speed of the model forms (cell stack, Keras layer per depth, fused graph, native kernels) here.

    python -m bench.forms [--sizes 2x32@1024x32 2x256 3x512] [--cells gru lstm] [--mixed-precision]
Each (size, cell, form) runs in a process of its own, with the thread set-up the trainer gives that form
(trainer.training.configure_cpu_threads), so every row is what `trainer.train --backend-form FORM` would get.
`--backend-form auto` chooses from the rows this writes to trainer/forms_table.json (trainer.model.resolve_form),
this CPU's rows where there are any: a run replaces the rows it measures again and keeps the others, so the file
holds every CPU it has run on (trainer.forms.cpu_signature);
on a GPU the `layers` form is the cuDNN one (the row records whether CudnnRNN ops ran). Synthetic token ids
(speed does not depend on the text), Adam; a few warm-up steps, then timed `train_on_batch` steps in blocks: a
row's speed is its fastest block (noise on a shared machine only ever slows a step down, and single 10-step timings
moved by 10–30 % between runs here, enough to flip `auto`'s choice).
Each row also records its matrix products' FLOPs per trained token and this CPU's dense float32 matmul rate
through TensorFlow (measured once per run, before the rows): their quotient is the fastest any float32 form could
train that size here, the ceiling the report sets beside the float32 rows.
A size is LAYERSxHIDDENS, optionally @BATCHxSTEPS (default: --batch × --num-steps).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.common import ROOT, emit, matmul_gflops, result_path, training_flops_per_token
from common import cli

FORMS = ("stacked", "layers", "fused", "native")


def parse_size(text: str, batch: int, num_steps: int) -> tuple[int, int, int, int]:
    """'2x256' or '2x32@1024x32' → (layers, hiddens, batch, num_steps)."""
    try:
        size, _, shape = text.lower().partition("@")
        layers, hiddens = (int(x) for x in size.split("x"))
        if shape:
            batch, num_steps = (int(x) for x in shape.split("x"))
    except ValueError:
        raise SystemExit(f"bench.forms: bad size {text!r}; expected LAYERSxHIDDENS[@BATCHxSTEPS]") from None
    return layers, hiddens, batch, num_steps


def time_form(cell: str, layers: int, hiddens: int, form: str, batch: int, num_steps: int, vocab: int,
              steps: int, warmup: int, mixed_precision: bool, blocks: int = 1) -> dict:
    """One row, in this process (configures TF's threads: call it in a fresh process)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from trainer import native
    from trainer.config import ModelConfig, TrainConfig
    from trainer.forms import cpu_signature
    from trainer.model import build_model, graph_op_types
    from trainer.training import compile_model, configure_cpu_threads

    cfg = TrainConfig.from_flat(cell=cell, num_layers=layers, num_hiddens=hiddens, batch_size=batch, optimizer="adam",
                      lr=1e-3, mixed_precision=mixed_precision)
    configure_cpu_threads(cfg, form)
    gpus = tf.config.list_physical_devices("GPU")
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16" if gpus else "mixed_bfloat16")
    model_cfg = ModelConfig(vocab_size=vocab, cell=cell, num_layers=layers, num_hiddens=hiddens, form=form)
    model = compile_model(build_model(model_cfg), cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, size=(blocks * steps + warmup, batch, num_steps + 1), dtype=np.int32)
    batches = [(tf.constant(b[:, :-1]), tf.constant(b[:, 1:])) for b in ids]
    start = time.perf_counter()
    model.train_on_batch(*batches[0])  # traces and builds the training graph, then runs one step
    first_step_s = time.perf_counter() - start
    for x, y in batches[1:warmup]:  # warm up
        model.train_on_batch(x, y)
    block_seconds = []
    for block in range(blocks):
        start = time.perf_counter()
        for x, y in batches[warmup + block * steps:warmup + (block + 1) * steps]:
            loss = model.train_on_batch(x, y)
        float(loss[0] if isinstance(loss, list) else loss)  # wait for the block's last step
        block_seconds.append(time.perf_counter() - start)
    seconds = min(block_seconds)
    types = graph_op_types(model)
    native_ops = any(t.startswith("DeepRnn") for t in types)
    return {"cell": cell, "size": f"{layers}x{hiddens}", "batch": batch, "num_steps": num_steps, "form": form,
            "device": "GPU" if gpus else "CPU", "cpu": cpu_signature(),
            "gpu": tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else None,
            "precision": "mixed" if mixed_precision else "float32",
            "params": int(model.count_params()),
            "train_flops_per_token": training_flops_per_token(cell, layers, hiddens, vocab),
            "train_tokens_per_s": steps * batch * num_steps / seconds, "ms_per_step": 1e3 * seconds / steps,
            "first_step_s": first_step_s, "ms_per_step_blocks": [1e3 * s / steps for s in block_seconds],
            "cudnn": any("CudnnRNN" in t for t in types), "native_ops": native_ops,
            # the native kernels' recurrent products in bfloat16: on AMX tiles or AVX512_BF16 (trainer.native)
            "bf16_products": (("amx" if native.uses_amx() else "avx512_bf16")
                              if native_ops and mixed_precision and not gpus else None)}


ROW_KEY = ("device", "cpu", "gpu", "cell", "size", "batch", "num_steps", "precision", "form")


def merge_rows(previous: list[dict], measured: list[dict]) -> list[dict]:
    """The stored rows with this run's in place of the same rows measured before (same machine, cell, size,
    shape, precision and form): other CPUs' rows, and this one's not measured again, stay."""
    key = lambda r: tuple(r.get(k) for k in ROW_KEY)  # noqa: E731
    new = {key(r) for r in measured}
    return [r for r in previous if key(r) not in new] + measured


def stored_rows() -> list[dict]:
    """The rows the forms table holds now (none if it is missing or unreadable)."""
    try:
        return json.loads(result_path("forms").read_text()).get("rows", [])
    except (OSError, ValueError):
        return []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter,
                                     epilog=cli.examples_from(__doc__))
    parser.add_argument("--sizes", nargs="+",
                        help="LAYERSxHIDDENS[@BATCHxSTEPS] (default: 2x256 3x1024 on a GPU; on a CPU the book's "
                             "2x32@1024x32, 2x256 and 3x512)")
    parser.add_argument("--cells", nargs="+", default=["gru", "lstm"], help="cells to time")
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS,
                        help="forms to time (trainer.model.FORMS)")
    parser.add_argument("--batch", type=int, default=64, help="batch size of rows given without @BATCHxSTEPS")
    parser.add_argument("--num-steps", type=int, default=64, help="sequence length of rows given without @BATCHxSTEPS")
    parser.add_argument("--vocab", type=int, default=65, help="vocabulary size (65: tinyshakespeare's characters)")
    parser.add_argument("--steps", type=cli.positive_int, default=5, help="timed training steps per block")
    parser.add_argument("--blocks", type=cli.positive_int, default=5,
                        help="timed blocks per row; the row's speed is the fastest")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (tracing, allocation)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="also time each form with mixed precision (float16 on GPU, bfloat16 on CPU)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: time one JSON-described row and print it
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.row:
        print(json.dumps(time_form(**json.loads(args.row))))
        return
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    sizes = args.sizes or (["2x256", "3x1024"] if gpus else ["2x32@1024x32", "2x256", "3x512"])
    f32_gflops = None if gpus else matmul_gflops()  # before the rows, on a quiet machine
    rows = []
    for size in sizes:
        layers, hiddens, batch, num_steps = parse_size(size, args.batch, args.num_steps)
        for cell in args.cells:
            for mixed in ([False, True] if args.mixed_precision else [False]):
                for form in args.forms:
                    if form == "layers" and not gpus and hiddens < 256 and batch > 256:
                        continue  # minutes per row on a CPU at the book's batch, never the fastest
                    spec = dict(cell=cell, layers=layers, hiddens=hiddens, form=form, batch=batch,
                                num_steps=num_steps, vocab=args.vocab, steps=args.steps, warmup=args.warmup,
                                mixed_precision=mixed, blocks=args.blocks)
                    proc = subprocess.run([sys.executable, "-m", "bench.forms", "--row", json.dumps(spec)],
                                          cwd=ROOT, capture_output=True, text=True)
                    if proc.returncode != 0:
                        print(f"bench.forms: {cell} {size} {form} failed: {proc.stderr.strip()[-500:]}",
                              file=sys.stderr)
                        continue
                    rows.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "matmul_gflops_f32": f32_gflops})
                    print(rows[-1], flush=True)
    emit("forms", {"device": "GPU" if gpus else "CPU", "mixed_precision": args.mixed_precision,
                   "vocab": args.vocab, "steps": args.steps, "blocks": args.blocks,
                   "rows": merge_rows(stored_rows(), rows)})


if __name__ == "__main__":
    main()
