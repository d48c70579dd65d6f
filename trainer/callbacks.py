"""Training callbacks that Keras does not ship (throughput, divergence, deadline), and Keras's
checkpoint callbacks made crash-safe."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time

import keras
import numpy as np

from common import atomic
from common.cli import UserError


def save_weights_atomically(model, path: str) -> None:
    """model.save_weights(path), written beside and renamed: a SIGKILL mid-write (HDF5 writes are
    many syscalls) leaves the previous file whole instead of one that fails to load."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic.check_space(os.path.dirname(path) or ".", weights_file_bytes(model), path)
    with atomic.replacing(path, ".weights.h5") as tmp:
        model.save_weights(tmp)


def weights_file_bytes(model) -> int:
    """An upper estimate of model.save_weights' file: the variables' bytes, HDF5's headers (a few KiB per
    variable) and a margin."""
    variables = list(model.variables)
    if getattr(model, "optimizer", None) is not None and model.optimizer.built:
        variables += list(model.optimizer.variables)
    data = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
    return data + 4096 * len(variables) + (256 << 10)


class EpochCSVLogger(keras.callbacks.CSVLogger):
    """CSVLogger(append=True) whose file keeps one row per epoch. A run killed after an epoch's row but before
    its next backup repeats that epoch when resumed: before its first row, the rows of the epochs it repeats
    (and a row the kill cut short) are dropped, the file rewritten atomically."""

    def __init__(self, filename: str):
        super().__init__(filename, append=True)
        self._pruned = False

    def on_train_begin(self, logs=None):
        self._pruned = False
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        if not self._pruned:
            self._pruned = True
            self.csv_file.close()
            self._keep_rows_before(epoch)
            self.csv_file = open(self.filename, "a")  # noqa: SIM115 - CSVLogger closes it at train end
            self.writer = None
        super().on_epoch_end(epoch, logs)

    def _keep_rows_before(self, epoch: int) -> None:
        with open(self.filename, newline="") as f:
            content = f.read()
        rows = list(csv.reader(io.StringIO(content)))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        whole = body if content.endswith("\n") else body[:-1]  # a last row without its newline was cut short
        kept = [row for row in whole if (row_epoch := _epoch_of(row)) is not None and row_epoch < epoch]
        if len(kept) == len(body):
            return
        text = io.StringIO()
        csv.writer(text, dialect=csv.excel).writerows([header, *kept])
        atomic.write_text(self.filename, text.getvalue())


def _epoch_of(row: list[str]) -> int | None:
    try:
        return int(float(row[0]))
    except ValueError:
        return None


class ThrottledEpochSaves:
    """Mixin for the epoch-end saves of the latest state: at most one every `min_interval_s` seconds (like
    tf.train.CheckpointManager's checkpoint_interval), the last skipped one made when training ends. With
    epochs of a fraction of a second, saving each one costs more than a tenth of the run (bench.train_vs_d2l's
    time breakdown); a crash repeats at most min_interval_s of training. A run that raises (divergence)
    never saves its skipped state."""

    min_interval_s = 0.0
    _saved_at = -math.inf
    _skipped = None

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self._saved_at < self.min_interval_s:
            self._skipped = (epoch, logs)
            return
        super().on_epoch_end(epoch, logs)
        self._saved_at, self._skipped = time.monotonic(), None

    def on_train_end(self, logs=None):
        if self._skipped is not None:
            super().on_epoch_end(*self._skipped)
            self._skipped = None
        super().on_train_end(logs)


class AtomicModelCheckpoint(ThrottledEpochSaves, keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint(save_weights_only=True) whose file is replaced atomically; min_interval_s > 0 for
    the latest weights (not with save_best_only: BestWeightsCheckpoint keeps every best epoch)."""

    def __init__(self, filepath: str, min_interval_s: float = 0.0, **kwargs):
        super().__init__(filepath, save_weights_only=True, **kwargs)
        if min_interval_s and self.save_best_only:
            raise ValueError("min_interval_s would skip best epochs; use BestWeightsCheckpoint")
        self.min_interval_s = min_interval_s

    def _save_model(self, epoch, batch, logs):
        filepath = self._get_file_path(epoch, batch, logs)
        if self._should_save_model(epoch, batch, logs, filepath):  # also tracks the best value
            save_weights_atomically(self.model, filepath)


class BestWeightsCheckpoint(keras.callbacks.ModelCheckpoint):
    """The best epoch's weights (save_best_only), written atomically at most every min_interval_s seconds
    and when training ends; a new best in between is held in memory. Beside the weights, record_path
    gets {"epoch", monitor: value} after them, so a resumed run compares against the best on disk (not a
    better one a crash kept from being written) and reports the epoch the weights are from."""

    def __init__(self, filepath: str, record_path: str, monitor: str, min_interval_s: float = 0.0, **kwargs):
        super().__init__(filepath, monitor=monitor, mode="min", save_weights_only=True, save_best_only=True,
                         **kwargs)
        self.record_path, self.min_interval_s = record_path, min_interval_s
        self._written_at, self._pending = -math.inf, None  # pending: (epoch, value, weights or None)

    @staticmethod
    def read_record(record_path: str) -> dict | None:
        try:
            with open(record_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _save_model(self, epoch, batch, logs):
        if self.monitor not in (logs or {}):  # an epoch --validation-freq did not validate
            return
        filepath = self._get_file_path(epoch, batch, logs)
        if not self._should_save_model(epoch, batch, logs, filepath):  # also tracks the best value
            return
        value = float((logs or {})[self.monitor])
        if time.monotonic() - self._written_at >= self.min_interval_s:
            self._write(epoch, value, None)
        else:  # [arrays]: a copy, since training moves on
            self._pending = (epoch, value, self.model.get_weights())

    def _write(self, epoch, value, weights):
        """Writes the model's current weights, or `weights` (restoring the current ones afterwards)."""
        current = None
        if weights is not None:
            current = self.model.get_weights()
            self.model.set_weights(weights)
        try:
            save_weights_atomically(self.model, self.filepath)
        finally:
            if current is not None:
                self.model.set_weights(current)
        atomic.write_text(self.record_path, json.dumps({"epoch": epoch, self.monitor: value}))
        self._written_at, self._pending = time.monotonic(), None

    def on_train_end(self, logs=None):
        if self._pending is not None:
            self._write(*self._pending)
        super().on_train_end(logs)


class AtomicBackupAndRestore(ThrottledEpochSaves, keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose weights and epoch record are each replaced atomically, at most one backup
    every min_interval_s seconds (ThrottledEpochSaves).

    Keras writes both in place: a kill while the JSON record is truncated leaves an empty file that
    the next run cannot parse. Weights are written first, so a kill between the two repeats at most
    the epoch in flight."""

    def __init__(self, backup_dir: str, min_interval_s: float = 0.0, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.min_interval_s = min_interval_s

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        save_weights_atomically(self.model, self._weights_path)
        atomic.write_text(self._training_metadata_path,
                          json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """With --ema, puts the optimizer's moving average of the weights in the model for what reads the
    model after an epoch: Keras's SwapEMAWeights swaps it in around fit()'s validation, and this also at
    epoch end, for the stream score and the best-weights checkpoint placed after it. TrainedWeights, placed
    after those, swaps the trained weights back before the latest-state saves and the next epoch."""

    def on_epoch_end(self, epoch, logs=None):
        self._swap_variables()

    def on_predict_begin(self, logs=None):  # nothing predicts during fit (and Keras 3.15's predict swap-back is broken)
        pass

    on_predict_end = on_predict_begin


class TrainedWeights(keras.callbacks.SwapEMAWeights):
    """AveragedWeights' partner: at epoch end, swaps the trained weights back into the model (the swap is
    its own inverse), so training, the backup and the latest checkpoint keep the trained weights and the
    average in the optimizer."""

    def on_epoch_end(self, epoch, logs=None):
        self._swap_variables()

    def on_test_begin(self, logs=None):  # AveragedWeights does the swaps around validation
        pass

    on_test_end = on_predict_begin = on_predict_end = on_test_begin


class LearningRateLog(keras.callbacks.Callback):
    """Puts the epoch's learning rate in the logs on every run, so history.csv keeps one set of columns
    whether or not --reduce-lr-patience is given (CSVLogger appends under the header it found)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and "learning_rate" not in logs:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class StreamValidation(keras.callbacks.Callback):
    """Adds val_stream_perplexity (and stream_seconds) to the epoch logs: each source's whole validation
    stream scored with the state carried across it (trainer.stateful.StreamScorer), beside the zero-state
    window perplexity, at the epochs fit() validated (ValidationSchedule).

    Scores with a carry_state copy of the model being trained in the fastest scoring form
    (trainer.stateful.carried_network), its weights copied from the model (the core of a CarriedStateModel)
    every epoch; the model needs the `model_cfg` attribute trainer.training.build_training_model sets. Must
    come before the loggers and checkpoints that read it."""

    def __init__(self, streams):
        super().__init__()
        self.streams = streams
        self._scorer = self._source = None  # traced for one network; a new trial's model gets a new one

    def on_epoch_end(self, epoch, logs=None):
        from trainer.stateful import CarriedStateModel, StreamScorer, carried_network

        if logs is None or not self.streams or "val_loss" not in logs:  # validates when fit() validated
            return
        source = self.model.core if isinstance(self.model, CarriedStateModel) else self.model
        if self._scorer is None or self._source is not source:
            self._scorer, self._source = StreamScorer(carried_network(self.model.model_cfg)), source
        self._scorer.core.set_weights(source.get_weights())
        started = time.perf_counter()
        logs["val_stream_perplexity"] = self._scorer.perplexity(self.streams)
        logs["stream_seconds"] = time.perf_counter() - started


class ValidationSchedule(keras.callbacks.Callback):
    """Which epochs fit() validates under --validation-freq N: pass `epochs` as fit()'s validation_freq (Keras
    validates at the 1-based epochs `in` it) and the callback in the list, so it sees the model.

    Every Nth epoch, plus each fit() call's first epoch (history.csv's columns come from it, also on resume),
    the last of `last_epoch`, and an epoch that ends training early (a Deadline stops it within the epoch,
    before fit() asks), so a run's last row always has its validation figures."""

    def __init__(self, every: int, last_epoch: int):
        super().__init__()
        self.every, self.last_epoch = every, last_epoch
        self._first = None
        self.epochs = _DueEpochs(self)

    def on_epoch_begin(self, epoch, logs=None):
        if self._first is None:
            self._first = epoch + 1

    def on_train_end(self, logs=None):
        self._first = None  # a later fit() call validates its own first epoch

    def due(self, epoch: int) -> bool:
        """Whether fit() validates the 1-based `epoch`, asked after its training steps."""
        stopping = self._model is not None and bool(getattr(self.model, "stop_training", False))
        return epoch == self._first or epoch % self.every == 0 or epoch >= self.last_epoch or stopping


class _DueEpochs(list):
    """validation_freq for fit(): a list (what Keras accepts besides an int) whose membership is
    ValidationSchedule.due, decided when fit() asks rather than fixed in advance."""

    def __init__(self, schedule: ValidationSchedule):
        super().__init__()
        self.schedule = schedule

    def __contains__(self, epoch) -> bool:
        return self.schedule.due(int(epoch))


class ValidatedReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose patience counts validations: an epoch without the monitored figure
    (--validation-freq) neither waits nor warns."""

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor in (logs or {}):
            super().on_epoch_end(epoch, logs)


class GradientNormLog(keras.callbacks.Callback):
    """Adds grad_norm to the epoch logs: the mean global gradient norm (before clipping) over the epoch's
    steps, which trainer.train's optimizers record (trainer.optimizers.GradientNormRecorder)."""

    def on_epoch_begin(self, epoch, logs=None):
        if getattr(self.model.optimizer, "grad_norm_sum", None) is not None:  # built by the first step
            self.model.optimizer.grad_norm_sum.assign(0.0)
            self.model.optimizer.grad_norm_count.assign(0.0)

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        if logs is None or getattr(optimizer, "grad_norm_sum", None) is None:
            return
        count = float(keras.ops.convert_to_numpy(optimizer.grad_norm_count))
        logs["grad_norm"] = float(keras.ops.convert_to_numpy(optimizer.grad_norm_sum)) / count if count else 0.0


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """TensorBoard logs once per epoch (update_freq="epoch", the default). Keras 3's callback still calls
    tf.summary.scalar for each of every batch's logs, writing nothing (no writer is set within an epoch),
    about 0.3 ms per batch here (1 % of the book's training step); this one leaves them out."""

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs if self.update_freq != "epoch" else None)


class TrainingDiverged(UserError):
    """The loss became NaN/inf or exploded; the run stops before the bad state is backed up."""


class Throughput(keras.callbacks.Callback):
    """Adds `train_seconds` and `tokens_per_s` (training steps only, no validation) and `valid_seconds`
    (the window validation) to each epoch's logs.

    Tokens are counted from the batches run (a whole batch of tokens_per_batch each, capped at
    tokens_per_epoch for a short last batch), so an epoch that a Deadline cuts short is not credited
    with a whole epoch of tokens."""

    def __init__(self, tokens_per_epoch: int, tokens_per_batch: int):
        super().__init__()
        self.tokens_per_epoch, self.tokens_per_batch = tokens_per_epoch, tokens_per_batch
        self._start = self._train_end = self._valid_end = None
        self._batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._train_end, self._valid_end, self._batches = time.perf_counter(), None, None, 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches = batch + 1  # the index of the last step run (several with steps_per_execution)

    def on_test_begin(self, logs=None):
        if self._start is not None and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_test_end(self, logs=None):
        if self._train_end is not None:
            self._valid_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = (self._train_end or time.perf_counter()) - self._start
        if logs is not None:
            logs["train_seconds"] = seconds
            logs["tokens_per_s"] = self.tokens_this_epoch() / seconds
            logs["valid_seconds"] = self._valid_end - self._train_end if self._valid_end is not None else 0.0

    def tokens_this_epoch(self) -> int:
        return min(self.tokens_per_epoch, self._batches * self.tokens_per_batch)


class DivergenceGuard(keras.callbacks.Callback):
    """Raises TrainingDiverged when the epoch loss is not finite or exceeds `limit`."""

    def __init__(self, limit: float):
        super().__init__()
        self.limit = limit

    @classmethod
    def for_vocabulary(cls, vocab_size: int) -> "DivergenceGuard":
        """A limit well above a uniform guess's loss, log(vocab_size), so only a real blow-up trips it."""
        return cls(limit=max(20.0, 4 * math.log(vocab_size)))

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and (not math.isfinite(loss) or loss > self.limit):
            raise TrainingDiverged(f"training diverged at epoch {epoch + 1}: loss {loss:.4g} "
                                   f"(limit {self.limit:.3g}); lower --lr or --clip-norm")


class Deadline(keras.callbacks.Callback):
    """Ends training at a wall-clock deadline (checked every batch), keeping the epochs done so far."""

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline

    def on_train_batch_end(self, batch, logs=None):
        if time.time() > self.deadline:
            self.model.stop_training = True


class TimeLimit(Deadline):
    """Ends each fit() a fixed number of seconds after it begins: in the tuner, every trial gets the same
    time, so trials are compared on what they learn in equal time, as the time-limited final training is."""

    def __init__(self, seconds: float):
        super().__init__(math.inf)
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.deadline = time.time() + self.seconds


class CosineToDeadline(keras.callbacks.Callback):
    """warmup_cosine for a run with a time limit: a linear warm-up over warmup_steps optimizer steps, then
    cosine decay from peak to floor · peak, its progress the larger of (steps done / total_steps) and
    (time spent / time allowed). The rate reaches its floor when either budget runs out, so a run given
    a time limit and epochs to spare anneals by its deadline instead of being stopped at a high rate.
    Sets the optimizer's rate before every batch (the optimizer holds a plain rate, not a schedule). The
    clock is this process's: a resumed run anneals again over its own time limit, from where its steps are."""

    def __init__(self, peak: float, floor: float, warmup_steps: int, total_steps: int, start: float,
                 deadline: float, clock=time.time):
        super().__init__()
        self.peak, self.floor, self.warmup_steps, self.total_steps = peak, floor, warmup_steps, total_steps
        self.start, self.deadline, self.clock = start, deadline, clock

    def rate(self, step: int, now: float) -> float:
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        by_steps = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        by_time = (now - self.start) / max(self.deadline - self.start, 1e-9)
        progress = min(1.0, max(by_steps, by_time))
        return self.peak * (self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        optimizer.learning_rate.assign(self.rate(int(optimizer.iterations), self.clock()))


class CosineOverEachFit(CosineToDeadline):
    """CosineToDeadline started again by every fit(): in the tuner each trial warms up and anneals the rate it
    was compiled with over its own time limit, as the time-limited final training does with its deadline,
    so trials are scored the way the winner will be trained."""

    def __init__(self, floor: float, warmup_steps: int, total_steps: int, seconds: float, clock=time.time):
        super().__init__(math.nan, floor, warmup_steps, total_steps, math.nan, math.nan, clock)
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.peak = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.start = self.clock()
        self.deadline = self.start + self.seconds


class EpochLine(keras.callbacks.Callback):
    """One short line per epoch (`--progress epoch`): what a log or a pipeline console can show.

    Prints every epoch up to `max_lines` epochs, else every k-th so a long run prints about max_lines lines;
    the first and the last epoch always. Must come after Throughput in the callback list (it reads its logs)."""

    def __init__(self, epochs: int, max_lines: int = 25, print_fn=print):
        super().__init__()
        self.epochs, self.every, self.print_fn = epochs, max(1, math.ceil(epochs / max_lines)), print_fn
        self._started = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not (epoch == 0 or (epoch + 1) % self.every == 0 or epoch + 1 == self.epochs):
            return
        parts = [f"epoch {epoch + 1:>{len(str(self.epochs))}}/{self.epochs}"]
        for key, label in (("perplexity", "perplexity"), ("val_perplexity", "val perplexity"),
                           ("val_stream_perplexity", "stream")):
            if key in logs:
                parts.append(f"{label} {float(logs[key]):.3f}")
        if "tokens_per_s" in logs:
            parts.append(f"{float(logs['tokens_per_s']) / 1e6:.2f} M tokens/s")
        parts.append(f"{time.perf_counter() - self._started:.1f} s")
        self.print_fn(", ".join(parts), flush=True)
