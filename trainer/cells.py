"""Recurrent cells: the chapter's scratch cell, and each cell's maths split in two halves.

`input_projection` (x W_xh + b, for all time steps in one matmul) and `recurrent_step` (the rest)
are written against the weights of Keras's own GRUCell/LSTMCell/SimpleRNNCell and of ScratchRNNCell,
so the fast form in trainer.model and the serving loop compute exactly what the cells compute.
"""
from __future__ import annotations

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


def make_cell(kind: str, units: int, dropout: float = 0.0, name: str | None = None):
    if kind == "gru":
        return keras.layers.GRUCell(units, dropout=dropout, name=name)
    if kind == "lstm":
        return keras.layers.LSTMCell(units, dropout=dropout, name=name)
    if kind == "rnn":
        return keras.layers.SimpleRNNCell(units, dropout=dropout, name=name)
    if kind == "scratch":
        return ScratchRNNCell(units, name=name)
    raise ValueError(f"unknown cell {kind!r}")


def cell_kind(cell) -> str:
    for kind, cls in (("gru", keras.layers.GRUCell), ("lstm", keras.layers.LSTMCell),
                      ("rnn", keras.layers.SimpleRNNCell), ("scratch", ScratchRNNCell)):
        if isinstance(cell, cls):
            return kind
    raise TypeError(f"unsupported cell {type(cell).__name__}")


def num_states(cell) -> int:
    return 2 if cell_kind(cell) == "lstm" else 1


def _input_bias(cell):
    if cell_kind(cell) == "gru":
        return cell.bias[0]  # reset_after: row 0 is the input bias, row 1 the recurrent bias
    return cell.bias


def project_ids(cell, ids):
    """one_hot(ids) W_xh + b without the one-hot: ids [...] → [..., gates]."""
    return tf.gather(cell.kernel, ids) + _input_bias(cell)


def project_inputs(cell, x):
    """x [..., d] → x W_xh + b [..., gates]."""
    return tf.matmul(x, cell.kernel) + _input_bias(cell) if x.shape.rank == 2 else \
        tf.einsum("...d,dg->...g", x, cell.kernel) + _input_bias(cell)


def recurrent_step(cell, xp, states):
    """One time step given the input projection xp [B, gates]; states is a list of [B, h].

    Returns (output [B, h], new states). Exactly the Keras cells' maths (GRU with reset_after).
    """
    kind, units = cell_kind(cell), cell.units
    if kind == "gru":
        h = states[0]
        hp = tf.matmul(h, cell.recurrent_kernel) + cell.bias[1]          # [B, 3h]
        x_zr, x_h = tf.split(xp, [2 * units, units], axis=-1)
        h_zr, h_h = tf.split(hp, [2 * units, units], axis=-1)
        z, r = tf.split(tf.sigmoid(x_zr + h_zr), 2, axis=-1)
        candidate = tf.tanh(x_h + r * h_h)
        h = candidate + z * (h - candidate)                                # z h + (1 - z) h̃
        return h, [h]
    if kind == "lstm":
        h, c = states
        gates = xp + tf.matmul(h, cell.recurrent_kernel)                   # [B, 4h]: i, f, c, o
        i_f, g, o = tf.split(gates, [2 * units, units, units], axis=-1)
        i, f = tf.split(tf.sigmoid(i_f), 2, axis=-1)
        c = f * c + i * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, [h, c]
    h = cell.activation(xp + tf.matmul(states[0], cell.recurrent_kernel))   # rnn and scratch
    return h, [h]
