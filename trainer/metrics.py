"""Per-token cross-entropy (the loss) and streaming metrics over it: perplexity, bits per token."""
from __future__ import annotations

import math
import warnings

import keras
import tensorflow as tf
from keras import ops


def token_cross_entropy(labels, logits, fused: bool = False, gradient: bool = True):
    """labels [B, T] int, logits [B, T, V] → per-token cross-entropy [B, T] (float32).

    logsumexp(logits) − logits·one_hot(label): the same number as sparse softmax cross-entropy, and
    faster on CPU for character vocabularies than TF's fused SparseSoftmaxCrossEntropyWithLogits
    kernel (`python -m bench.train_profile` times both; figures in bench/RESULTS.md). The one-hot
    product (not a gather) keeps the gradient elementwise, with no segment sum.

    fused: the native kernels' one op for the loss and its gradient (trainer.native.softmax_cross_entropy;
    the native form trains with it), standard ops where the kernels cannot be loaded. gradient=False tells it
    no gradient is needed (metrics).
    """
    logits = tf.cast(logits, tf.float32)
    if fused and _native_kernels():
        from trainer import native

        return native.softmax_cross_entropy(labels, logits, gradient=gradient)
    picked = tf.reduce_sum(logits * tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1]), axis=-1)
    return tf.reduce_logsumexp(logits, axis=-1) - picked


def _native_kernels() -> bool:
    """Whether the native kernels load here; a warning says why not (the standard ops compute the same)."""
    from trainer import native

    ok, why = native.available()
    if not ok:
        warnings.warn(f"native kernels unavailable ({why}); the loss runs as standard ops", stacklevel=3)
    return ok


@keras.saving.register_keras_serializable(package="deep_rnn")
class TokenCrossEntropy(keras.losses.Loss):
    """The training loss: mean per-token cross-entropy from logits (see token_cross_entropy); fused: in the
    native kernels' one op."""

    def __init__(self, name: str = "token_cross_entropy", fused: bool = False, **kwargs):
        super().__init__(name=name, **kwargs)
        self.fused = fused

    def call(self, y_true, y_pred):
        return token_cross_entropy(y_true, y_pred, fused=self.fused)

    def get_config(self):
        return {**super().get_config(), "fused": self.fused}


class _TokenCrossEntropy(keras.metrics.Metric):
    """Sums per-token cross-entropy and counts tokens over a whole epoch (not a mean of batch means)."""

    def __init__(self, name: str, fused: bool = False, **kwargs):
        super().__init__(name=name, **kwargs)
        self.fused = fused
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", dtype="float32")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="float32")

    def get_config(self):
        return {**super().get_config(), "fused": self.fused}

    def update_state(self, y_true, y_pred, sample_weight=None):
        ce = token_cross_entropy(y_true, y_pred, fused=self.fused, gradient=False)
        self.total.assign_add(ops.sum(ce))
        self.count.assign_add(ops.cast(ops.size(ce), "float32"))

    def mean_loss(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package="deep_rnn")
class Perplexity(_TokenCrossEntropy):
    def __init__(self, name: str = "perplexity", fused: bool = False, **kwargs):
        super().__init__(name=name, fused=fused, **kwargs)

    def result(self):
        return ops.exp(self.mean_loss())


@keras.saving.register_keras_serializable(package="deep_rnn")
class BitsPerToken(_TokenCrossEntropy):
    def __init__(self, name: str = "bits_per_token", fused: bool = False, **kwargs):
        super().__init__(name=name, fused=fused, **kwargs)

    def result(self):
        return self.mean_loss() / math.log(2.0)


def perplexity_by_position(model, dataset) -> list[float]:
    """Perplexity at each window position over a dataset of (ids [B, T], targets [B, T]) batches.

    Every window starts from a zero state, so the first targets are predicted from one or two
    characters of context; this shows how much of a windowed perplexity that start costs.
    """
    total, count = None, 0
    for ids, targets in dataset:
        ce = token_cross_entropy(targets, model(ids, training=False))  # [B, T]
        total = tf.reduce_sum(ce, axis=0) + (0.0 if total is None else total)
        count += int(tf.shape(ce)[0])
    return [math.exp(float(v) / count) for v in total]
