"""Optimizers and learning-rate schedules for trainer.train, each recording the gradient norm it sees.

SGD (the book's), Adam, and AdamW (decoupled weight decay, Loshchilov & Hutter); a constant rate or a
linear warm-up followed by cosine decay to a tenth of the peak (under a time limit the decay follows
the clock as well: callbacks.CosineToDeadline). The global gradient norm before clipping
is summed in two optimizer variables per step, so callbacks.GradientNormLog can put the epoch's mean in
history.csv (a norm that grows before a divergence, or sits at the clip value, shows here first).
"""
from __future__ import annotations

import keras
import tensorflow as tf

SCHEDULES = ("constant", "warmup_cosine")
COSINE_FLOOR = 0.1  # warmup_cosine decays to this fraction of the peak rate


class GradientNormRecorder:
    """Mixin for a Keras optimizer: adds the global norm of every step's gradients (before clipping) to
    grad_norm_sum and 1 to grad_norm_count."""

    def build(self, variables):
        super().build(variables)
        self.grad_norm_sum = self.add_variable((), initializer="zeros", name="grad_norm_sum",
                                               aggregation="only_first_replica")
        self.grad_norm_count = self.add_variable((), initializer="zeros", name="grad_norm_count",
                                                 aggregation="only_first_replica")

    def _clip_gradients(self, grads):
        present = [tf.cast(g, tf.float32) for g in grads if g is not None]
        if present:
            self.grad_norm_sum.assign_add(tf.linalg.global_norm(present))
            self.grad_norm_count.assign_add(1.0)
        return super()._clip_gradients(grads)


class WarmedUpAverage:
    """Mixin for a Keras optimizer with use_ema (--ema): the average warms up as TensorFlow's does, and fit()
    leaves the trained weights in the model (callbacks.AveragedWeights swaps the average in where it is read)."""

    def _update_model_variables_moving_average(self, trainable_variables):
        """Keras's moving average (--ema) with TensorFlow's warm-up (tf.train.ExponentialMovingAverage's
        num_updates): the first step copies the weights, step t > 0 uses momentum min(ema_momentum,
        (1 + t) / (10 + t)). Keras uses ema_momentum from step 1 on, so a short run (a tuner trial) would
        drag its first, untrained weights along: at momentum 0.998, 300 steps in, 55 % of the average."""
        if not self.use_ema:
            return
        step = tf.cast(self.iterations, tf.float32)
        momentum = tf.where(step > 0, tf.minimum(self.ema_momentum, (1.0 + step) / (10.0 + step)), 0.0)
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                m = tf.cast(momentum, variable.dtype)
                average.assign(m * average + (1.0 - m) * variable)

    def finalize_variable_values(self, var_list):
        """Keeps the trained weights when fit() ends (Keras would put the --ema average in them): trainer.train
        loads the best epoch's average itself, and the latest checkpoint and backup written as fit() ends
        must hold the trained weights, which a resumed run continues from."""


@keras.saving.register_keras_serializable(package="deep_rnn")
class RecordingSGD(GradientNormRecorder, WarmedUpAverage, keras.optimizers.SGD):
    pass


@keras.saving.register_keras_serializable(package="deep_rnn")
class RecordingAdam(GradientNormRecorder, WarmedUpAverage, keras.optimizers.Adam):
    pass


@keras.saving.register_keras_serializable(package="deep_rnn")
class RecordingAdamW(GradientNormRecorder, WarmedUpAverage, keras.optimizers.AdamW):
    pass


def learning_rate(lr: float, schedule: str, warmup_steps: int, total_steps: int):
    """A float (constant) or a schedule: linear warm-up from ~0 to lr over warmup_steps, then cosine decay
    to COSINE_FLOOR · lr at total_steps (Keras's CosineDecay with its warm-up)."""
    if schedule == "constant":
        return float(lr)
    warmup = min(warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(total_steps - warmup, 1), alpha=COSINE_FLOOR,
        warmup_target=float(lr), warmup_steps=warmup)


def make_optimizer(name: str, lr, clip_norm: float, weight_decay: float = 0.0, ema: float = 0.0):
    """name sgd | adam | adamw; lr a float or a schedule; clip_norm 0 turns clipping off; ema > 0 keeps
    Keras's moving average of the weights with that momentum (callbacks.AveragedWeights swaps it in)."""
    options = {"global_clipnorm": clip_norm or None}
    if ema:
        options.update(use_ema=True, ema_momentum=ema)
    if name == "sgd":
        return RecordingSGD(learning_rate=lr, **options)
    if name == "adam":
        return RecordingAdam(learning_rate=lr, **options)
    return RecordingAdamW(learning_rate=lr, weight_decay=weight_decay, **options)
