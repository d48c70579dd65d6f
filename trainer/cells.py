"""Recurrent cells: the chapter's scratch cell, and each cell's maths split in two halves.

`input_table` / `project_inputs` (x W_xh + b) and `recurrent_step` (the rest)
are written against the weights of Keras's own GRUCell/LSTMCell/SimpleRNNCell and of ScratchRNNCell,
so the fast form in trainer.model and the serving loop compute exactly what the cells compute.
"""
from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="deep_rnn")
class ScratchRNNCell(keras.layers.Layer):
    """H_t = φ(X_t W_xh + H_{t-1} W_hh + b_h): the book's RNN layer, as a Keras cell.

    Weights are named and shaped like SimpleRNNCell's (kernel, recurrent_kernel, bias), so a
    stack of these equals a stack of SimpleRNNCell given the same weights.
    """

    def __init__(self, units: int, activation: str = "tanh", sigma: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.sigma = sigma
        self.state_size = units
        self.output_size = units

    def build(self, input_shape):
        init = keras.initializers.RandomNormal(stddev=self.sigma)  # the book's randn * sigma
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer=init, name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, self.units), initializer=init,
                                                name="recurrent_kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, inputs, states, training=False):
        # inputs [B, d], states [[B, h]] → output [B, h], new states [[B, h]]
        prev = states[0] if isinstance(states, (list, tuple)) else states
        h = self.activation(ops.matmul(inputs, self.kernel) + ops.matmul(prev, self.recurrent_kernel) + self.bias)
        return h, [h]

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, self.units), dtype=self.compute_dtype)]

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "activation": keras.activations.serialize(self.activation), "sigma": self.sigma}


CELL_CLASSES = {"gru": keras.layers.GRUCell, "lstm": keras.layers.LSTMCell, "rnn": keras.layers.SimpleRNNCell,
                "scratch": ScratchRNNCell}


def make_cell(kind: str, units: int, dropout: float = 0.0, name: str | None = None):
    if kind not in CELL_CLASSES:
        raise ValueError(f"unknown cell {kind!r}")
    if kind == "scratch":  # the book's cell has no dropout of its own
        return ScratchRNNCell(units, name=name)
    return CELL_CLASSES[kind](units, dropout=dropout, name=name)


def cell_kind(cell) -> str:
    for kind, cls in CELL_CLASSES.items():
        if isinstance(cell, cls):
            return kind
    raise TypeError(f"unsupported cell {type(cell).__name__}")


def num_states(cell) -> int:
    return 2 if cell_kind(cell) == "lstm" else 1


class CellWeights(NamedTuple):
    """A cell's weights read once as tensors (a loop over time then reads no variable per step)."""

    kind: str
    units: int
    kernel: tf.Tensor            # [d, gates]
    recurrent_kernel: tf.Tensor  # [h, gates]
    input_bias: tf.Tensor        # [gates]
    recurrent_bias: tf.Tensor | None  # GRU (reset_after) only: [3h]
    activation: object


def read_weights(cell, dtype=None) -> CellWeights:
    kind = cell_kind(cell)

    def read(v):
        t = tf.convert_to_tensor(v)
        return tf.cast(t, dtype) if dtype is not None and t.dtype != dtype else t

    bias = read(cell.bias)
    input_bias, recurrent_bias = (bias[0], bias[1]) if kind == "gru" else (bias, None)
    return CellWeights(kind, cell.units, read(cell.kernel), read(cell.recurrent_kernel), input_bias,
                       recurrent_bias, getattr(cell, "activation", tf.tanh))


@tf.custom_gradient
def gather_rows(table, ids):
    """tf.gather(table, ids) whose gradient is a dense [V, G] sum, not IndexedSlices.

    The optimizer then sees an ordinary dense gradient for the first layer's kernel (faster for
    the small vocabularies of character models, measured in bench/RESULTS.md).
    """
    def grad(dy):  # dy [..., G] → [V, G]
        flat = tf.reshape(dy, [-1, tf.shape(dy)[-1]])
        return tf.math.unsorted_segment_sum(flat, tf.reshape(ids, [-1]), tf.shape(table)[0]), None

    return tf.gather(table, ids), grad


def input_table(w: CellWeights):
    """[V, gates]: row v is one_hot(v) W_xh + b, so a first layer's input projection is a row lookup."""
    return w.kernel + w.input_bias


def project_inputs(w: CellWeights, x):
    """x [B, d] → x W_xh + b [B, gates]."""
    return tf.matmul(x, w.kernel) + w.input_bias


def recurrent_step(w: CellWeights, xp, states):
    """One time step given the input projection xp [B, gates]; states is a list of [B, h].

    Returns (output [B, h], new states). Exactly the Keras cells' maths (GRU with reset_after).
    """
    units = w.units
    if w.kind == "gru":
        h = states[0]
        hp = tf.matmul(h, w.recurrent_kernel) + w.recurrent_bias              # [B, 3h]
        x_zr, x_h = tf.split(xp, [2 * units, units], axis=-1)
        h_zr, h_h = tf.split(hp, [2 * units, units], axis=-1)
        z, r = tf.split(tf.sigmoid(x_zr + h_zr), 2, axis=-1)
        candidate = tf.tanh(x_h + r * h_h)
        h = candidate + z * (h - candidate)                                    # z h + (1 - z) h̃
        return h, [h]
    if w.kind == "lstm":
        h, c = states
        gates = xp + tf.matmul(h, w.recurrent_kernel)                          # [B, 4h]: i, f, c, o
        i_f, g, o = tf.split(gates, [2 * units, units, units], axis=-1)
        i, f = tf.split(tf.sigmoid(i_f), 2, axis=-1)
        c = f * c + i * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, [h, c]
    h = w.activation(xp + tf.matmul(states[0], w.recurrent_kernel))           # rnn and scratch
    return h, [h]
