"""Carried state: truncated backpropagation through time over lanes, and full-context (stream) evaluation.

Both use the model's carry_state form (trainer.model.build_model(cfg, carry_state=True)): the same
network and weights as the plain model, taking the initial states and returning the final ones.
"""
from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from trainer.config import ModelConfig
from trainer.metrics import token_cross_entropy


def scoring_form(model_cfg: ModelConfig) -> str:
    """The form that scores streams fastest: a stream is one row run token after token, which the native
    kernels do in one op per layer and chunk on a CPU, where the graph forms run a graph of small ops per
    step (per-epoch stream validation in the fused form was the largest overhead of the book's run in
    bench.train_vs_d2l's time breakdown). All forms share one weight layout, so any model's weights load
    into it; elsewhere the model's own form."""
    from trainer import native

    if (model_cfg.cell in ("gru", "lstm") and keras.mixed_precision.global_policy().compute_dtype == "float32"
            and not tf.config.list_physical_devices("GPU") and native.available()[0]):
        return "native"
    return model_cfg.form


def carried_network(model_cfg: ModelConfig, weights_from: keras.Model | None = None) -> keras.Model:
    """The carry_state network of model_cfg in the form that scores streams fastest (scoring_form), with
    the weights of any model of the same architecture when given (every form, plain or carry_state, shares
    one weight layout)."""
    from trainer.model import build_model

    core = build_model(dataclasses.replace(model_cfg, form=scoring_form(model_cfg)), carry_state=True)
    if weights_from is not None:
        core.set_weights(weights_from.get_weights())
    return core


@keras.saving.register_keras_serializable(package="deep_rnn")
class CarriedStateModel(keras.Model):
    """Trains a carry_state network on consecutive batches of the same lanes (trainer.train --stateful).

    Row b of batch k + 1 continues row b of batch k, so the state a batch ends with is where the next one
    starts: kept in non-trainable variables [rows, h], read with the gradient stopped (truncated BPTT) and
    zeroed for the rows where `reset` is 1 (epoch start, a new source). Called with plain ids (validation
    windows), every row starts from zero and nothing is carried.
    """

    def __init__(self, core: keras.Model, rows: int, **kwargs):
        super().__init__(**kwargs)
        self.core, self.rows = core, rows
        # one value per replica: each replica carries its own rows' states (on_read: no cross-replica sync);
        # float32 even under mixed precision (autocast off), so a carried state is never rounded to bfloat16
        self.carried = [keras.Variable(initializer="zeros", shape=(rows, int(spec.shape[-1])), dtype="float32",
                                       trainable=False, autocast=False, name=f"carried_state_{i}",
                                       synchronization="on_read",
                                       aggregation="only_first_replica")
                        for i, spec in enumerate(core.inputs[1:])]
        self.built = True  # the core is a built functional model: nothing is created from the first batch

    def call(self, inputs, training=False):
        if not isinstance(inputs, dict):                                   # ids [B, T]: windows, zero state
            ids = inputs
            zeros = [ops.zeros((ops.shape(ids)[0], v.shape[-1])) for v in self.carried]
            return self.core([ids, *zeros], training=training)[0]
        ids, reset = inputs["ids"], inputs["reset"]                        # [B, T], [B]
        keep = ops.expand_dims(1.0 - ops.cast(reset, "float32"), -1)       # [B, 1]
        states = [ops.stop_gradient(ops.convert_to_tensor(v)) * keep for v in self.carried]
        logits, *final = self.core([ids, *states], training=training)
        if training:
            for variable, state in zip(self.carried, final):
                variable.assign(ops.cast(ops.stop_gradient(state), variable.dtype))
        return logits

    def reset_carried(self) -> None:
        for variable in self.carried:
            variable.assign(ops.zeros(variable.shape))

    def get_config(self):
        return {**super().get_config(), "core": keras.saving.serialize_keras_object(self.core), "rows": self.rows}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["core"] = keras.saving.deserialize_keras_object(config["core"])
        return cls(**config)


class StreamScorer:
    """Scores whole token streams with the state carried from each stream's first token to its last.

    One row per stream, run in chunks through one traced function with dynamic length (so a chunk of any
    length reuses it); padding past a stream's end is masked out. Token i + 1 is predicted from tokens
    0..i: the sum is what the export's `score` signature computes for the same text.
    """

    def __init__(self, core: keras.Model, chunk: int = 512):
        self.core, self.chunk = core, chunk
        state_specs = [tf.TensorSpec([None, int(spec.shape[-1])], tf.float32) for spec in core.inputs[1:]]

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32),
                                      tf.TensorSpec([None, None], tf.float32), state_specs])
        def run(ids, targets, mask, states):
            outputs = core([ids, *states], training=False)
            losses = token_cross_entropy(targets, outputs[0]) * mask                 # [S, C]
            return losses, [tf.cast(s, tf.float32) for s in outputs[1:]]

        self._run = run

    def _chunk_losses(self, streams):
        """Yields the streams' per-token losses chunk by chunk, [S, C] nats (zero past a stream's end), the state
        carried from chunk to chunk."""
        longest = max(len(s) for s in streams)
        padded = np.zeros((len(streams), longest), np.int32)
        mask = np.zeros((len(streams), longest - 1), np.float32)
        for row, stream in enumerate(streams):
            padded[row, :len(stream)] = stream
            mask[row, :len(stream) - 1] = 1.0
        states = [tf.zeros((len(streams), int(spec.shape[-1]))) for spec in self.core.inputs[1:]]
        for start in range(0, longest - 1, self.chunk):
            end = min(start + self.chunk, longest - 1)
            losses, states = self._run(padded[:, start:end], padded[:, start + 1:end + 1], mask[:, start:end], states)
            yield losses.numpy()

    def token_losses(self, streams) -> list[np.ndarray]:
        """Each stream's per-token cross-entropy in nats, [len(stream) - 1] (≥ 2 tokens a stream): used when
        averaging several models' predictions. Holds every token's loss; `losses` keeps only the sums."""
        streams = [np.asarray(s, np.int32) for s in streams]
        if not streams:
            return []
        every = np.concatenate(list(self._chunk_losses(streams)), axis=1)       # [S, longest - 1]
        return [every[row, :len(s) - 1].astype(np.float64) for row, s in enumerate(streams)]

    def losses(self, streams) -> list[tuple[float, int]]:
        """[(sum of per-token cross-entropy in nats, tokens predicted)] for each stream (≥ 2 tokens each)."""
        streams = [np.asarray(s, np.int32) for s in streams]
        if not streams:
            return []
        totals = np.zeros(len(streams), np.float64)
        for chunk in self._chunk_losses(streams):
            totals += chunk.sum(axis=1, dtype=np.float64)
        return [(float(total), len(s) - 1) for total, s in zip(totals, streams)]

    def perplexity(self, streams) -> float:
        """Perplexity over all the streams' predicted tokens together."""
        results = self.losses(streams)
        nats, count = sum(r[0] for r in results), sum(r[1] for r in results)
        return math.exp(nats / count) if count else math.nan
