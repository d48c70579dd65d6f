"""Streaming per-token metrics: perplexity = exp(total loss / total tokens), and bits per token."""
from __future__ import annotations

import math

import keras
from keras import ops


class _TokenCrossEntropy(keras.metrics.Metric):
    """Sums per-token cross-entropy and counts tokens over a whole epoch (not a mean of batch means)."""

    def __init__(self, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", dtype="float32")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        ce = keras.losses.sparse_categorical_crossentropy(y_true, ops.cast(y_pred, "float32"), from_logits=True)
        self.total.assign_add(ops.sum(ce))
        self.count.assign_add(ops.cast(ops.size(ce), "float32"))

    def mean_loss(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package="deep_rnn")
class Perplexity(_TokenCrossEntropy):
    def __init__(self, name: str = "perplexity", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        return ops.exp(self.mean_loss())


@keras.saving.register_keras_serializable(package="deep_rnn")
class BitsPerToken(_TokenCrossEntropy):
    def __init__(self, name: str = "bits_per_token", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        return self.mean_loss() / math.log(2.0)
