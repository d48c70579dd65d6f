"""Training as a library: train_and_evaluate(config, data_dir, model_dir) trains (or resumes) a deep RNN on
a preprocessed data directory and writes model.keras, checkpoints, history, curves and metrics.json."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import time

from common import atomic, cli, locks, paths
from common import text as text_lib
from common import vocab as vocab_lib
from common.cli import UserError
from trainer import compat
from trainer.config import ModelConfig, OptimiserConfig, TrainConfig
from trainer.distribute import cluster_task, is_chief, make_strategy
from trainer.plots import curves_title, plot_curves

RUN_CONFIG = "run_config.json"
# the optimiser's settings its saved state carries into a resumed run (the plateau patience is a callback's, set
# afresh each run)
OPTIMISER_FIELDS = tuple(f.name for f in dataclasses.fields(OptimiserConfig) if f.name != "reduce_lr_patience")
RESOLVED_CONFIG = "config.yaml"  # the run's settings by section: `trainer.train --config` repeats it


LATEST_STATE_EVERY_S = 10.0  # backup, last and best weights: at most this often (and at the end), not every epoch




def configure_cpu_threads(cfg: TrainConfig, form: str) -> None:
    """Small recurrent models in the graph forms run fastest on CPU with one thread per op, ops in parallel.

    Their matmuls are too small to split across cores, but the unrolled graph has independent
    ops (layer l+1 at step t beside layer l at step t+1) for the inter-op pool to overlap. The native
    kernels split the batch across the intra-op threads instead, so they keep TF's defaults.
    Measured in bench/RESULTS.md; must run before TensorFlow starts its thread pools.
    """
    import tensorflow as tf

    if form == "native" or cfg.model.num_hiddens > 256 or tf.config.list_physical_devices("GPU"):
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(os.cpu_count() or 2)
    except RuntimeError:  # TF already started in this process (e.g. a second run in tests)
        pass


def compile_model(model, cfg: TrainConfig, steps_per_epoch: int | None = None):
    """Loss, metrics and optimizer (trainer.optimizers); an lr schedule spans epochs × steps_per_epoch steps."""
    import keras

    from trainer.metrics import BitsPerToken, Perplexity, TokenCrossEntropy
    from trainer.model import model_form
    from trainer.optimizers import learning_rate, make_optimizer

    if cfg.optimiser.lr_schedule != "constant" and not steps_per_epoch:
        raise ValueError("an lr schedule needs the number of steps per epoch")
    lr = (float(cfg.optimiser.lr) if cosine_by_callback(cfg)
          else learning_rate(cfg.optimiser.lr, cfg.optimiser.lr_schedule, cfg.optimiser.warmup_steps,
                             cfg.run.epochs * (steps_per_epoch or 1)))
    optimizer = make_optimizer(cfg.optimiser.optimizer, lr, cfg.optimiser.clip_norm, cfg.optimiser.weight_decay,
                               cfg.optimiser.ema)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # float16 gradients need loss scaling
    fused = model_form(model) == "native"  # the native kernels' loss op beside their recurrences
    model.compile(optimizer=optimizer,
                  loss=TokenCrossEntropy(fused=fused),
                  metrics=[Perplexity(fused=fused), BitsPerToken(fused=fused)],
                  steps_per_execution=cfg.run.steps_per_execution)
    return model


def fit_data(cfg: TrainConfig, info):
    """(training batches, validation batches, Throughput callback, batches per epoch) for fit(), shared with
    the tuner.

    With cfg.run.steps_per_epoch the training windows repeat, so an epoch is that many batches drawn from a
    reshuffled stream: windows made with a small --stride give every epoch fresh window offsets while
    keeping epochs, and so validation, early stopping and lr patience, at a fixed size. With cfg.run.stateful
    the batches are the training stream's lanes in order (trainer.data.make_stateful_dataset)."""
    import math

    from trainer import callbacks as cb
    from trainer.data import make_dataset, make_stateful_dataset

    if cfg.run.stateful:
        train_ds, batches = make_stateful_dataset(info, cfg.run.batch_size)
    else:
        train_ds = make_dataset(info.train_files, info.num_steps, cfg.run.batch_size, shuffle=True, seed=cfg.run.seed,
                                num_windows=info.num_train)
        batches = math.ceil(info.num_train / cfg.run.batch_size)
    if cfg.run.steps_per_epoch:
        train_ds, batches = train_ds.repeat(), cfg.run.steps_per_epoch
    valid_ds = make_dataset(info.valid_files, info.num_steps, cfg.run.batch_size, shuffle=False,
                            num_windows=info.num_valid)
    windows = batches * cfg.run.batch_size if cfg.run.steps_per_epoch or cfg.run.stateful else info.num_train
    throughput = cb.Throughput(tokens_per_epoch=windows * info.num_steps,
                               tokens_per_batch=cfg.run.batch_size * info.num_steps)
    return train_ds, valid_ds, throughput, batches


def fit_steps(cfg: TrainConfig, train_ds, valid_ds) -> dict:
    """fit()'s steps_per_epoch and validation_steps: --steps-per-epoch, else each dataset's batches where
    tf.data knows them. Without them, Keras 3's epoch iterator makes a second iterator at every epoch's start
    beside the one it made at the last epoch's end, which it drops (the training one has started filling
    its shuffle buffer in the background by then): two wasted iterators per epoch."""
    def batches(ds):
        count = int(ds.cardinality())
        return count if count > 0 else None

    return {"steps_per_epoch": cfg.run.steps_per_epoch or batches(train_ds), "validation_steps": batches(valid_ds)}


def build_training_model(cfg: TrainConfig, model_cfg: ModelConfig, steps_per_epoch: int, replicas: int = 1):
    """The compiled model fit() trains: the plain network, or for --stateful the carry_state network inside
    a CarriedStateModel holding each replica's batch_size / replicas lanes. Call in the strategy's scope.
    The model keeps model_cfg (attribute `model_cfg`) for the callbacks that build copies of it."""
    from trainer.model import build_model
    from trainer.stateful import CarriedStateModel

    if not cfg.run.stateful:
        model = build_model(model_cfg)
    elif cfg.run.batch_size % replicas:
        raise UserError(f"--stateful: --batch-size {cfg.run.batch_size} lanes do not split evenly over {replicas} "
                        f"replicas")
    else:
        model = CarriedStateModel(build_model(model_cfg, carry_state=True), rows=cfg.run.batch_size // replicas)
    model.model_cfg = model_cfg
    return compile_model(model, cfg, steps_per_epoch)


def plain_model(model, model_cfg: ModelConfig, cfg: TrainConfig, steps_per_epoch: int):
    """The ids → logits network with the trained weights, compiled for evaluate() (a CarriedStateModel's core
    has the plain network's weight layout)."""
    from trainer.model import build_model
    from trainer.stateful import CarriedStateModel

    if not isinstance(model, CarriedStateModel):
        return model
    plain = build_model(model_cfg)
    plain.set_weights(model.core.get_weights())
    return compile_model(plain, cfg, steps_per_epoch)


def stream_validation(info):
    """The callback that logs val_stream_perplexity (callbacks.StreamValidation) over info's validation streams."""
    from trainer import callbacks as cb
    from trainer.data import split_streams

    return cb.StreamValidation(split_streams(info, "valid"))


def averaged_weights_callbacks(cfg: TrainConfig) -> tuple[list, list]:
    """With --ema, the callbacks around those that read an epoch's weights (validation, stream score, best
    checkpoint): the first list swaps the optimizer's moving average in, the second swaps it back out."""
    from trainer import callbacks as cb

    return ([cb.AveragedWeights()], [cb.TrainedWeights()]) if cfg.optimiser.ema else ([], [])


def monitored(cfg: TrainConfig) -> str:
    """The validation figure that picks the best checkpoint: the stream's under --stateful."""
    return "val_stream_perplexity" if cfg.run.stateful else "val_perplexity"


def lr_schedule_callbacks(cfg: TrainConfig, steps_per_epoch: int = 1, deadline: float | None = None) -> list:
    """ReduceLROnPlateau on validation perplexity when cfg.optimiser.reduce_lr_patience is set (down to lr / 32,
    patience in validations); for warmup_cosine under a time limit, callbacks.CosineToDeadline annealing by the deadline
    (time.time(); default: cfg.run.time_limit_min from now)."""
    from trainer import callbacks as cb
    from trainer.optimizers import COSINE_FLOOR

    if cosine_by_callback(cfg):
        start = time.time()
        return [cb.CosineToDeadline(cfg.optimiser.lr, COSINE_FLOOR, cfg.optimiser.warmup_steps,
                                    cfg.run.epochs * steps_per_epoch, start,
                                    deadline or start + 60 * cfg.run.time_limit_min)]
    if not cfg.optimiser.reduce_lr_patience:
        return []
    return [cb.ValidatedReduceLROnPlateau(monitor="val_perplexity", mode="min", factor=0.5,
                                          patience=cfg.optimiser.reduce_lr_patience, min_lr=cfg.optimiser.lr / 32,
                                          verbose=0)]


def cosine_by_callback(cfg: TrainConfig) -> bool:
    """warmup_cosine under a time limit runs as callbacks.CosineToDeadline; the optimizer gets a plain rate."""
    return cfg.optimiser.lr_schedule == "warmup_cosine" and cfg.run.time_limit_min is not None


def resolved_form(cfg: TrainConfig) -> str:
    """cfg.model.form with 'auto' resolved from bench.forms' measurements for this cell, width and device."""
    from trainer.model import resolve_form

    return resolve_form(cfg.model.form, cfg.model.cell, cfg.model.num_hiddens, cfg.run.mixed_precision,
                        cfg.regularisers.weight_drop)


def check_fits_in_memory(model: ModelConfig | object, vocab_size: int, what: str = "the model") -> None:
    """UserError before anything is built when the weights, their gradients and two optimiser moments (4 copies of
    float32) would take more than half of this machine's memory."""
    needed = 16 * model.num_params(vocab_size)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if needed > total // 2:
        raise UserError(f"{what} ({model.num_layers} × {model.num_hiddens} {model.cell.upper()}, "
                        f"{model.num_params(vocab_size):,} weights) needs about {needed / 2**30:.1f} GiB for weights, "
                        f"gradients and optimiser state; this machine has {total / 2**30:.1f} GiB")


def model_config_for(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    try:
        return cfg.model_config(vocab_size, resolved_form(cfg))
    except ValueError as err:
        raise UserError(str(err)) from None


def _check_resume(model_dir: str, run_config: dict) -> None:
    """Refuses to resume a run whose vocabulary, sequence length or architecture changed."""
    path = os.path.join(model_dir, RUN_CONFIG)
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            previous = json.load(f)
        if not isinstance(previous, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err}); cannot tell whether resuming is safe: use a new --model-dir "
                        f"or delete it") from None
    for key, what in (("vocab_sha256", "vocabulary"), ("num_steps", "num_steps"), ("architecture", "architecture")):
        if previous.get(key) != run_config[key]:
            raise UserError(f"refusing to resume in {model_dir}: the {what} changed "
                            f"({previous.get(key)} → {run_config[key]}); use a new --model-dir or delete it")
    before, now = previous.get("train", {}), run_config["train"]
    changed = [k for k in OPTIMISER_FIELDS if k in before and before[k] != now.get(k)]
    if changed and os.path.isdir(os.path.join(model_dir, "backup")):
        what = ", ".join(f"{k} {before[k]} → {now.get(k)}" for k in changed)
        raise UserError(f"refusing to resume in {model_dir} with other optimiser settings ({what}): the run resumes "
                        f"its optimiser's saved state, which they would not change; use a new --model-dir")


def read_history(path: str) -> list[dict]:
    """history.csv rows, one per epoch (the last row wins when a resumed run repeated an epoch)."""
    if not os.path.exists(path):
        return []
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            values = {}
            for key, value in row.items():
                try:
                    values[key] = float(value)
                except (TypeError, ValueError):  # a short row, an extra column, a repeated header
                    continue
            if "epoch" in values and "perplexity" in values:
                rows[int(values["epoch"])] = values
    return [rows[e] for e in sorted(rows)]


def per_source_validation(model, info, batch_size: int) -> list[dict]:
    """Validation perplexity of each source, when the holdout split kept one validation part per source
    (shards valid-<source index>-*.tfrecord); [] when the validation windows are not split by source."""
    from trainer.data import files_by_source, make_dataset

    by_source = files_by_source(info.valid_files)
    if len(by_source) < 2:
        return []
    rows = []
    for index, files in by_source.items():
        windows = sum(info.shard_records.get(os.path.basename(path), 0) for path in files) or None
        result = model.evaluate(make_dataset(files, info.num_steps, batch_size, shuffle=False, num_windows=windows),
                                verbose=0, return_dict=True)
        rows.append({"source": info.source_paths[index] if index < len(info.source_paths) else f"source {index}",
                     "val_perplexity": float(result["perplexity"]),
                     "val_bits_per_token": float(result["bits_per_token"])})
    return rows


def save_model(model, path: str) -> None:
    from trainer.callbacks import weights_file_bytes

    atomic.check_space(os.path.dirname(path) or ".", weights_file_bytes(model), path)
    with atomic.replacing(path, ".keras") as tmp:
        model.save(tmp)


def train_and_evaluate(cfg: TrainConfig, data_dir: str, model_dir: str) -> dict:
    """Trains (or resumes) a model on RUN/data into model_dir and returns metrics.json's content."""
    cli.quiet_tensorflow()
    clock = {"started": time.perf_counter()}  # phase readings for metrics.json's time_breakdown
    import keras  # noqa: F401  (timed: loading TensorFlow and Keras is part of what a user waits for)

    clock["loaded"] = time.perf_counter()
    configure_cpu_threads(cfg, resolved_form(cfg))
    strategy = make_strategy(cfg.run.distribute)  # before any other TF work (multi-worker needs that)

    from trainer.data import check_records, load_data_info

    info = load_data_info(data_dir)
    check_records(info)
    if cfg.run.batch_size > info.num_train:
        raise UserError(f"--batch-size {cfg.run.batch_size} is larger than the {info.num_train} training windows")
    if not text_lib.normalize(cfg.run.sample_prefix, info.normalize):
        raise UserError(f"--sample-prefix {cfg.run.sample_prefix[:40]!r} is empty once normalised "
                        f"({info.normalize}); the sample needs a prefix to continue")
    model_cfg = model_config_for(cfg, info.vocab_size)
    check_fits_in_memory(model_cfg, info.vocab_size)
    run_config = {"architecture": model_cfg.architecture(), "model": model_cfg.to_dict(), "train": cfg.hparams(),
                  "vocab_sha256": info.vocab_sha256, "num_steps": info.num_steps,
                  "normalize": info.normalize, "tokenizer": info.tokenizer, "data_dir": os.path.abspath(data_dir)}
    task = cluster_task(cfg.run.distribute)
    chief = is_chief(task)
    work_dir = model_dir if chief else os.path.join(model_dir, f"worker-{task.get('index', 0)}")
    paths.make_output_dir(work_dir, "--model-dir")  # a file in its place or on its way: one line
    with locks.exclusive(work_dir, "trainer.train"):
        return _train_locked(cfg, model_cfg, info, model_dir, work_dir, chief, strategy, clock, run_config)


def _train_locked(cfg, model_cfg, info, model_dir, work_dir, chief, strategy, clock, run_config) -> dict:
    """The part of train_and_evaluate that needs the model dir to itself: resume checks, artefacts, training."""
    import keras

    _check_resume(model_dir, run_config)
    if chief:
        atomic.write_text(os.path.join(model_dir, RUN_CONFIG), json.dumps(run_config, indent=2) + "\n")
        atomic.write_text(os.path.join(model_dir, RESOLVED_CONFIG), cfg.to_yaml())  # `--config` reads it back
        atomic.write_text(os.path.join(model_dir, "vocab.txt"), vocab_lib.vocab_to_text(list(info.vocab)))

    keras.utils.set_random_seed(cfg.run.seed)
    with precision_policy(cfg.run.mixed_precision):
        return _train(cfg, model_cfg, info, model_dir, work_dir, chief, strategy, clock)


@contextlib.contextmanager
def precision_policy(mixed: bool):
    """Keras's global dtype policy for the models built inside: with `mixed`, float16 on GPUs and bfloat16
    elsewhere (no loss scaling needed), the loss in float32; the previous policy is restored after."""
    import keras
    import tensorflow as tf

    previous = keras.mixed_precision.global_policy()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16" if tf.config.list_physical_devices("GPU")
                                                else "mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def time_breakdown(clock: dict, epoch_logs: dict) -> dict:
    """Where this process's wall time went, in seconds, from the phase clock readings and the epoch logs of
    this process's fit() (History.history: train_seconds, valid_seconds, stream_seconds per epoch); the
    parts add up to wall_s.

    The first epoch's steps cost more than a steady one (tracing and building the training graph); that
    excess is `graph_build_s`, the rest of the steps `train_steps_s`."""
    train = epoch_logs.get("train_seconds", [])
    steady = sorted(train[1:])[len(train[1:]) // 2] if len(train) > 1 else None
    graph_build = max(0.0, train[0] - steady) if steady is not None else 0.0
    window = sum(epoch_logs.get("valid_seconds", []))
    stream = sum(epoch_logs.get("stream_seconds", []))
    fit = clock["fitted"] - clock["fit"]
    return {"load_tensorflow_s": clock["loaded"] - clock["started"],
            "setup_s": clock["fit"] - clock["loaded"],  # data checks, input pipeline, model build, callbacks
            "graph_build_s": graph_build,
            "train_steps_s": sum(train) - graph_build,
            "window_validation_s": window,
            "stream_validation_s": stream,
            "epoch_bookkeeping_s": max(0.0, fit - sum(train) - window - stream),  # checkpoints, logs, backups
            "finish_s": clock["finished"] - clock["fitted"]}  # best weights, per-source, sample, saving


def _train(cfg: TrainConfig, model_cfg: ModelConfig, info, model_dir: str, work_dir: str, chief: bool,
           strategy, clock: dict) -> dict:
    """Builds, fits, checkpoints and evaluates; writes the artefacts when this process is the chief."""
    import tensorflow as tf

    from trainer import callbacks as cb
    from trainer.generate import TextModel

    train_ds, valid_ds, throughput, steps_per_epoch = fit_data(cfg, info)
    with strategy.scope():
        model = build_training_model(cfg, model_cfg, steps_per_epoch, strategy.num_replicas_in_sync)
    if cfg.run.distribute == "multi_worker":
        batch = next(iter(train_ds))
        if cfg.run.stateful:  # a replica's rows: the carried state holds batch_size / replicas lanes
            batch = tf.nest.map_structure(lambda t: t[:model.rows], batch)
        compat.build_from_local_batch(model, batch, strategy)

    # Each process reads back the history it wrote itself: a worker reading the chief's file could
    # see it one epoch behind. The logs are reduced over all workers, so the files agree.
    history_path = os.path.join(work_dir, "history.csv")
    checkpoints = os.path.join(work_dir, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    monitor = monitored(cfg)
    best_record = os.path.join(checkpoints, "best.json")
    on_disk = cb.BestWeightsCheckpoint.read_record(best_record)  # a resumed run: the best that was written
    best_so_far = on_disk.get(monitor) if on_disk else None
    if on_disk is None and os.path.exists(os.path.join(checkpoints, "best.weights.h5")):  # written before best.json
        best_so_far = min((r[monitor] for r in read_history(history_path) if monitor in r), default=None)
    deadline = time.time() + 60 * cfg.run.time_limit_min if cfg.run.time_limit_min else None
    averaged, trained = averaged_weights_callbacks(cfg)
    validation = cb.ValidationSchedule(cfg.run.validation_freq, cfg.run.epochs)
    callbacks = [
        validation,
        cb.DivergenceGuard.for_vocabulary(info.vocab_size),
        throughput,
        *averaged,  # --ema: the average validates, and the best checkpoint keeps it
        stream_validation(info),  # before everything that reads val_stream_perplexity
        cb.GradientNormLog(),
        *lr_schedule_callbacks(cfg, steps_per_epoch, deadline),  # before the logger: it adds learning_rate
        cb.LearningRateLog(),          # the same column when it is not there
        cb.EpochCSVLogger(history_path),
        cb.BestWeightsCheckpoint(os.path.join(checkpoints, "best.weights.h5"), best_record, monitor,
                                 min_interval_s=LATEST_STATE_EVERY_S, initial_value_threshold=best_so_far),
        *trained,  # the trained weights back for the latest state and the next epoch
        cb.AtomicModelCheckpoint(os.path.join(checkpoints, "last.weights.h5"), min_interval_s=LATEST_STATE_EVERY_S),
        cb.EpochTensorBoard(os.path.join(work_dir, "logs"), write_graph=False, profile_batch=0),
        cb.AtomicBackupAndRestore(os.path.join(work_dir, "backup"), min_interval_s=LATEST_STATE_EVERY_S,
                                  delete_checkpoint=False),
    ]
    if deadline:
        callbacks.append(cb.Deadline(deadline))
    if cfg.run.progress == "epoch":
        callbacks.append(cb.EpochLine(cfg.run.epochs))
    clock["fit"] = time.perf_counter()
    fitted = model.fit(train_ds, validation_data=valid_ds, epochs=cfg.run.epochs, validation_freq=validation.epochs,
                       **fit_steps(cfg, train_ds, valid_ds), callbacks=callbacks,
                       verbose=int(cfg.run.progress == "bar"),
                       shuffle=False)  # tf.data shuffles

    clock["fitted"] = time.perf_counter()
    history = read_history(history_path)
    if not history:
        raise UserError(f"{model_dir}: no finished epoch in history.csv")
    best_path = os.path.join(checkpoints, "best.weights.h5")
    if os.path.exists(best_path):
        model.load_weights(best_path)
    model = plain_model(model, model_cfg, cfg,
                        steps_per_epoch)  # from here on: ids → logits, what exports and evaluations read
    per_source = per_source_validation(model, info, cfg.run.batch_size)
    text_model = TextModel(model, info.vocab, info.normalize, info.tokenizer)
    sample = text_model.greedy(tf.constant([cfg.run.sample_prefix]), cfg.run.sample_chars)["text"][0].numpy().decode()
    last = history[-1]
    written = cb.BestWeightsCheckpoint.read_record(best_record) or {}
    best = next((r for r in history if int(r["epoch"]) == written.get("epoch")),  # the loaded weights' epoch
                min(history, key=lambda r: r.get(monitor, math.inf)))
    steady = [r["tokens_per_s"] for r in history[1:] if "tokens_per_s" in r] or [last.get("tokens_per_s", 0.0)]
    train_seconds = sum(r.get("train_seconds", 0.0) for r in history)
    trained_tokens = sum(r["tokens_per_s"] * r["train_seconds"] for r in history
                         if "tokens_per_s" in r and "train_seconds" in r)
    metrics = {
        "train_ppl": last["perplexity"], "val_ppl": last["val_perplexity"],
        "train_bpc": last["bits_per_token"], "val_bpc": last["val_bits_per_token"],
        "best_val_ppl": best["val_perplexity"], "best_epoch": int(best["epoch"]) + 1,
        "val_stream_ppl": last.get("val_stream_perplexity", math.nan),
        "best_val_stream_ppl": best.get("val_stream_perplexity", math.nan), "selected_by": monitor,
        "grad_norm": last.get("grad_norm", math.nan),
        "epochs": len(history),
        "train_tokens_per_s": trained_tokens / train_seconds if train_seconds else 0.0,
        "train_tokens_per_s_steady": sorted(steady)[len(steady) // 2],
        "train_seconds": train_seconds,
        "hparams": cfg.hparams(), "form": model_cfg.form, "num_params": int(model.count_params()),
        "sample_prefix": cfg.run.sample_prefix, "sample": sample,
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
    }
    if per_source:
        metrics["per_source"] = per_source
    if chief:
        save_model(model, os.path.join(model_dir, "model.keras"))
        from common.book import BOOK_REFERENCE

        comparable = info.tokenizer == "char" and info.normalize == "d2l"  # the book's units: same-scale numbers
        plot_curves(history, os.path.join(model_dir, "curves.png"), curves_title(model_dir, model_cfg, info),
                    BOOK_REFERENCE["val_ppl"] if comparable else None)
    clock["finished"] = time.perf_counter()
    metrics["wall_s"] = clock["finished"] - clock["started"]
    metrics["time_breakdown"] = time_breakdown(clock, fitted.history)
    if chief:
        atomic.write_text(os.path.join(model_dir, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    return metrics
