"""Text in, text out: generation and scoring as TF graphs over a trained model's own weights.

`TextModel` is what serving.export saves (its tf.functions are the SavedModel signatures) and what
the trainer calls for its sample, so the served text and the trained model's text are one code path.
The normaliser and tokenizer are common.text's graph forms; the vocabulary is a constant in the graph.
"""
from __future__ import annotations

import types

import tensorflow as tf

from common import text as text_lib
from trainer import cells as cells_lib
from trainer.config import DEFAULT_LIMITS, ServingLimits
from trainer.model import model_cells

SMALLEST_NORMAL = 1.1754944e-38  # float32
PER_ROW = tf.TensorShape(None)  # a scalar (every row) or one value per row: both REST formats stack fine


def _after(checks, *tensors):
    """tensors, each made to wait for the check ops (the graph may otherwise run them first)."""
    checks = [c for c in checks if c is not None]
    with tf.control_dependencies(checks):
        out = [tf.identity(t) for t in tensors]
    return out[0] if len(out) == 1 else out


def per_row(value, batch, name: str):
    """A scalar or [batch] input → [batch]; InvalidArgument for any other shape."""
    value = tf.convert_to_tensor(value)
    flat = tf.reshape(value, [-1])
    ok = tf.logical_or(tf.equal(tf.rank(value), 0),
                       tf.logical_and(tf.equal(tf.rank(value), 1), tf.equal(tf.size(flat), batch)))
    check = tf.debugging.assert_equal(ok, True, message=f"{name} must be a scalar or have one value per row")
    return tf.broadcast_to(_after([check], flat), [batch])


def backend_variable(variable) -> tf.Variable:
    """The tf.Variable a Keras 3 variable wraps (itself when it already is one)."""
    inner = getattr(variable, "value", variable)
    if not isinstance(inner, tf.Variable):
        raise TypeError(f"{variable.path if hasattr(variable, 'path') else variable}: no tf.Variable inside")
    return inner


class TextModel(tf.Module):
    """Greedy/sampled continuation and scoring of raw strings with a trained Keras model."""

    def __init__(self, model, vocab, normalize: str, tokenizer: str, limits: ServingLimits = DEFAULT_LIMITS):
        super().__init__(name="text_model")
        # The Keras objects are held untracked (a SimpleNamespace is not trackable): a Keras 3 variable
        # exports as a fresh copy of the tf.Variable it wraps, which the session loader TF Serving uses would
        # restore while the functions kept reading the original. Tracking the wrapped tf.Variables themselves
        # makes the restored variables the ones the signatures read, in both loaders.
        self._keras = types.SimpleNamespace(cells=model_cells(model), dense=model.get_layer("logits"))
        self.exported_variables = [backend_variable(v) for v in model.weights]
        self.normalize, self.tokenizer, self.limits = normalize, tokenizer, limits
        self.vocab = tf.constant(list(vocab))
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(self.vocab, tf.range(len(vocab), dtype=tf.int64)),
            default_value=0)  # out-of-vocabulary → <unk> (id 0)
        self.separator = "" if tokenizer == "char" else " "
        self.num_hiddens = self.cells[0].units

    @property
    def cells(self) -> list:
        return self._keras.cells

    @property
    def dense(self):
        return self._keras.dense

    # ---- pieces ----
    def checked_batch(self, texts):
        """texts [B], made to wait for the batch-size limit; returns (texts, B)."""
        batch = tf.shape(texts)[0]
        check = tf.debugging.assert_less_equal(
            batch, self.limits.max_batch_size, message=f"batch must be <= {self.limits.max_batch_size} rows")
        return _after([check], texts, batch)

    def encode(self, texts):
        """[B] strings → (ids [B, L] int32 padded with 0, lengths [B] int32)."""
        tokens = text_lib.tf_tokenize(text_lib.tf_normalize(texts, self.normalize), self.tokenizer)
        lengths = tf.cast(tokens.row_lengths(), tf.int32)
        limit = self.limits.max_input_tokens
        check = tf.debugging.assert_less_equal(lengths, limit, message=f"input longer than {limit} tokens")
        tokens, lengths = _after([check], tokens, lengths)
        ids = tf.cast(tf.ragged.map_flat_values(self.table.lookup, tokens), tf.int32)
        return ids.to_tensor(0), lengths

    def decode(self, ids, lengths=None):
        """[B, N] ids → [B] strings (row b: its first lengths[b] ids, all N when lengths is None)."""
        tokens = tf.gather(self.vocab, ids)
        if lengths is not None:
            tokens = tf.ragged.boolean_mask(tokens, tf.sequence_mask(lengths, tf.shape(ids)[1]))
        return tf.strings.reduce_join(tokens, axis=-1, separator=self.separator)

    def initial_states(self, batch):
        return [tf.zeros((batch, self.num_hiddens)) for c in self.cells for _ in range(cells_lib.num_states(c))]

    def read_weights(self):
        """Every weight as a float32 tensor, read once per call so the token loops read no variable."""
        cells = [cells_lib.read_weights(cell, tf.float32) for cell in self.cells]
        return (cells, cells_lib.input_table(cells[0]), tf.cast(self.dense.kernel, tf.float32),
                tf.cast(self.dense.bias, tf.float32))

    def step(self, ids, states, weights):
        """One token per row: ids [B], flat states, read_weights() → (logits [B, V], new flat states)."""
        cells, table, dense_kernel, dense_bias = weights
        new_states, out, k = [], None, 0
        for i, (cell, w) in enumerate(zip(self.cells, cells)):
            n = cells_lib.num_states(cell)
            xp = tf.gather(table, ids) if i == 0 else cells_lib.project_inputs(w, out)
            out, layer_states = cells_lib.recurrent_step(w, xp, states[k:k + n])
            new_states += layer_states
            k += n
        return tf.matmul(out, dense_kernel) + dense_bias, new_states

    def warm_up(self, ids, lengths, weights):
        """Runs each row over its own prefix (the book's warm-up); returns its last logits and states."""
        batch = tf.shape(ids)[0]
        check = tf.debugging.assert_positive(lengths, message="prefix must not be empty")
        ids = _after([check], ids)
        states = self.initial_states(batch)
        last = tf.zeros((batch, len(self.vocab)))
        for t in tf.range(tf.shape(ids)[1]):
            tf.autograph.experimental.set_loop_options(
                shape_invariants=[(s, tf.TensorShape([None, self.num_hiddens])) for s in states])
            logits, new = self.step(ids[:, t], states, weights)
            live = (t < lengths)[:, None]
            states = [tf.where(live, n, s) for n, s in zip(new, states)]
            last = tf.where((t == lengths - 1)[:, None], logits, last)
        return last, states

    def checked_num_chars(self, num_chars, batch):
        """num_chars (scalar or [B]) → ([B] per row, the longest), both waiting for the range checks."""
        rows = per_row(tf.cast(num_chars, tf.int32), batch, "num_chars")
        limit = self.limits.max_chars
        checks = [tf.debugging.assert_non_negative(rows, message="num_chars must be >= 0"),
                  tf.debugging.assert_less_equal(rows, limit, message=f"num_chars must be <= {limit}")]
        rows = _after(checks, rows)
        # clipped as well, so no graph ordering can size anything from an unchecked value
        longest = tf.minimum(tf.reduce_max(tf.concat([rows, [0]], 0)), limit)
        return rows, longest

    def continue_text(self, prefix, num_chars, choose):
        """prefix [B] → prefix + num_chars[b] chosen tokens per row; choose(logits, step) → ids [B]."""
        prefix, batch = self.checked_batch(prefix)
        rows, longest = self.checked_num_chars(num_chars, batch)
        ids, lengths = self.encode(prefix)
        weights = self.read_weights()
        logits, states = self.warm_up(ids, lengths, weights)
        out = tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None])  # grows per step
        for i in tf.range(longest):
            next_ids = choose(logits, i)
            out = out.write(i, next_ids)
            logits, states = self.step(next_ids, states, weights)
        # An empty TensorArray of unknown element shape cannot be stacked: longest == 0 takes the other branch.
        generated = tf.cond(longest > 0, lambda: tf.transpose(out.stack()),
                            lambda: tf.zeros([batch, 0], tf.int32))  # [B, longest]
        text = tf.strings.join([prefix, self.decode(generated, rows)], separator=self.separator)
        return tf.where(rows > 0, text, prefix)

    # ---- the signatures ----
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prefix"),
                                  tf.TensorSpec(PER_ROW, tf.int32, name="num_chars")])
    def greedy(self, prefix, num_chars):
        return {"text": self.continue_text(prefix, num_chars,
                                           lambda logits, i: tf.argmax(logits, -1, output_type=tf.int32))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prefix"),
                                  tf.TensorSpec(PER_ROW, tf.int32, name="num_chars"),
                                  tf.TensorSpec(PER_ROW, tf.float32, name="temperature"),
                                  tf.TensorSpec(PER_ROW, tf.int32, name="top_k"),
                                  tf.TensorSpec(PER_ROW, tf.int64, name="seed")])
    def sample(self, prefix, num_chars, temperature, top_k, seed):
        """Row b draws from softmax(logits / temperature[b]) over its top_k[b] tokens (0: all), with draws
        seeded by (seed[b], step) alone: a row's text does not depend on the other rows of the batch."""
        prefix, batch = self.checked_batch(prefix)
        temperature = per_row(temperature, batch, "temperature")
        # CPUs treat float32 denormals (below 1.2e-38) as zero, so `temperature > 0` is false for 1e-45: the sign
        # is read from the bits instead (> 0: positive and not -0; `<= 100` also refuses NaN and inf), and a
        # denormal becomes the smallest normal temperature, as greedy (the logits are shifted to max 0 first)
        in_range = (tf.bitcast(temperature, tf.int32) > 0) & (temperature <= 100.0)
        checks = [tf.debugging.Assert(tf.reduce_all(in_range), ["temperature must be in (0, 100]"])]
        temperature = tf.maximum(_after(checks, temperature), SMALLEST_NORMAL)[:, None]  # [B, 1]
        seed = per_row(seed, batch, "seed")
        vocab_size = tf.size(self.vocab)
        top_k = per_row(top_k, batch, "top_k")
        k = tf.where((top_k <= 0) | (top_k > vocab_size), vocab_size, top_k)     # [B]

        def choose(logits, i):
            kth = tf.gather(tf.sort(logits, direction="DESCENDING"), k - 1, batch_dims=1)[:, None]
            masked = tf.where(logits < kth, tf.fill(tf.shape(logits), -1e9), logits)
            masked = (masked - tf.reduce_max(masked, -1, keepdims=True)) / temperature  # [B, V], max 0
            seeds = tf.stack([seed, tf.fill(tf.shape(seed), tf.cast(i, tf.int64))], axis=1)  # [B, 2]
            draws = tf.map_fn(lambda row: tf.random.stateless_categorical(row[0][None], 1, seed=row[1])[0, 0],
                              (masked, seeds), fn_output_signature=tf.int64)
            return tf.cast(draws, tf.int32)

        return {"text": self.continue_text(prefix, num_chars, choose)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def score(self, text):
        text, batch = self.checked_batch(text)
        ids, lengths = self.encode(text)
        check = tf.debugging.assert_greater_equal(lengths, 2, message="score needs at least 2 tokens per text")
        ids = _after([check], ids)
        weights = self.read_weights()
        states, total = self.initial_states(batch), tf.zeros((batch,))
        for t in tf.range(tf.shape(ids)[1] - 1):
            tf.autograph.experimental.set_loop_options(
                shape_invariants=[(s, tf.TensorShape([None, self.num_hiddens])) for s in states])
            logits, states = self.step(ids[:, t], states, weights)
            log_probs = tf.nn.log_softmax(logits)
            picked = tf.gather(log_probs, ids[:, t + 1], batch_dims=1)
            total += tf.where(t + 1 < lengths, picked, 0.0)
        num_tokens = lengths - 1
        return {"log_likelihood": total, "num_tokens": num_tokens,
                "perplexity": tf.exp(-total / tf.cast(num_tokens, tf.float32))}
