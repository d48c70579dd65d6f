"""Text in, text out: generation and scoring as TF graphs over a trained model's own weights.

`TextModel` is what serving.export saves (its tf.functions are the SavedModel signatures) and what
the trainer calls for its sample, so the served text and the trained model's text are one code path.
The normaliser and tokenizer are pipeline.text's graph forms; the vocabulary is a constant in the graph.
"""
from __future__ import annotations

import tensorflow as tf

from pipeline import text as text_lib
from trainer import cells as cells_lib
from trainer.model import model_cells

DEFAULT_MAX_CHARS = 1000
DEFAULT_MAX_INPUT_TOKENS = 20000


class TextModel(tf.Module):
    """Greedy/sampled continuation and scoring of raw strings with a trained Keras model."""

    def __init__(self, model, vocab, normalize: str, tokenizer: str, max_chars: int = DEFAULT_MAX_CHARS,
                 max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS):
        super().__init__(name="text_model")
        self.model = model  # tracks the variables; the functions below use its cells and output layer
        self.cells = model_cells(model)
        self.dense = model.get_layer("logits")
        self.normalize, self.tokenizer, self.max_chars = normalize, tokenizer, max_chars
        self.max_input_tokens = max_input_tokens
        self.vocab = tf.constant(list(vocab))
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(self.vocab, tf.range(len(vocab), dtype=tf.int64)),
            default_value=0)  # out-of-vocabulary → <unk> (id 0)
        self.separator = "" if tokenizer == "char" else " "
        self.num_hiddens = self.cells[0].units

    # ---- pieces ----
    def encode(self, texts):
        """[B] strings → (ids [B, L] int32 padded with 0, lengths [B] int32)."""
        tokens = text_lib.tf_tokenize(text_lib.tf_normalize(texts, self.normalize), self.tokenizer)
        ids = tf.cast(tf.ragged.map_flat_values(self.table.lookup, tokens), tf.int32)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        tf.debugging.assert_less_equal(lengths, self.max_input_tokens,
                                       message=f"input longer than {self.max_input_tokens} tokens")
        return ids.to_tensor(0), lengths

    def decode(self, ids):
        """[B, N] ids → [B] strings."""
        return tf.strings.reduce_join(tf.gather(self.vocab, ids), axis=-1, separator=self.separator)

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
        tf.debugging.assert_positive(lengths, message="prefix must not be empty")
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

    def _check_num_chars(self, num_chars):
        tf.debugging.assert_non_negative(num_chars, message="num_chars must be >= 0")
        tf.debugging.assert_less_equal(num_chars, self.max_chars,
                                       message=f"num_chars must be <= {self.max_chars}")

    def continue_text(self, prefix, num_chars, choose):
        """prefix [B] → prefix + num_chars chosen tokens; choose(logits, step) → ids [B]."""
        num_chars = tf.cast(num_chars, tf.int32)
        self._check_num_chars(num_chars)
        ids, lengths = self.encode(prefix)
        weights = self.read_weights()
        logits, states = self.warm_up(ids, lengths, weights)
        out = tf.TensorArray(tf.int32, size=num_chars, element_shape=[None])
        for i in tf.range(num_chars):
            next_ids = choose(logits, i)
            out = out.write(i, next_ids)
            logits, states = self.step(next_ids, states, weights)
        batch = tf.shape(ids)[0]
        # An empty TensorArray of unknown element shape cannot be stacked: num_chars == 0 takes the other branch.
        generated = tf.cond(num_chars > 0, lambda: tf.transpose(out.stack()),
                            lambda: tf.zeros([batch, 0], tf.int32))  # [B, num_chars]
        text = tf.strings.join([prefix, self.decode(generated)], separator=self.separator)
        return tf.where(num_chars > 0, text, prefix)

    # ---- the signatures ----
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prefix"),
                                  tf.TensorSpec([], tf.int32, name="num_chars")])
    def greedy(self, prefix, num_chars):
        return {"text": self.continue_text(prefix, num_chars,
                                           lambda logits, i: tf.argmax(logits, -1, output_type=tf.int32))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prefix"),
                                  tf.TensorSpec([], tf.int32, name="num_chars"),
                                  tf.TensorSpec([], tf.float32, name="temperature"),
                                  tf.TensorSpec([], tf.int32, name="top_k"),
                                  tf.TensorSpec([], tf.int64, name="seed")])
    def sample(self, prefix, num_chars, temperature, top_k, seed):
        tf.debugging.assert_positive(temperature, message="temperature must be > 0")
        tf.debugging.assert_less_equal(temperature, 100.0, message="temperature must be <= 100")
        vocab_size = tf.size(self.vocab)
        k = tf.where((top_k <= 0) | (top_k > vocab_size), vocab_size, top_k)

        def choose(logits, i):
            kth = tf.math.top_k(logits, k).values[:, -1:]
            masked = tf.where(logits < kth, tf.fill(tf.shape(logits), -1e9), logits)
            draws = tf.random.stateless_categorical(masked / temperature, 1,
                                                    seed=tf.stack([seed, tf.cast(i, tf.int64)]))
            return tf.cast(draws[:, 0], tf.int32)

        return {"text": self.continue_text(prefix, num_chars, choose)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def score(self, text):
        ids, lengths = self.encode(text)
        tf.debugging.assert_greater_equal(lengths, 2, message="score needs at least 2 tokens per text")
        batch = tf.shape(ids)[0]
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
