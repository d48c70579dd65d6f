"""Training callbacks that Keras does not ship: throughput and divergence."""
from __future__ import annotations

import math
import time

import keras

from pipeline.cli import UserError


class TrainingDiverged(UserError):
    """The loss became NaN/inf or exploded; the run stops before the bad state is backed up."""


class Throughput(keras.callbacks.Callback):
    """Adds `train_seconds` and `tokens_per_s` (training steps only, no validation) to each epoch's logs."""

    def __init__(self, tokens_per_epoch: int):
        super().__init__()
        self.tokens_per_epoch = tokens_per_epoch
        self._start = self._train_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._train_end = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self._start is not None and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = (self._train_end or time.perf_counter()) - self._start
        if logs is not None:
            logs["train_seconds"] = seconds
            logs["tokens_per_s"] = self.tokens_per_epoch / seconds


class DivergenceGuard(keras.callbacks.Callback):
    """Raises TrainingDiverged when the epoch loss is not finite or exceeds `limit`."""

    def __init__(self, limit: float):
        super().__init__()
        self.limit = limit

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
