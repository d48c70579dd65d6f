"""Pure model builders: ModelConfig in, Keras model out (ids [B, T] → logits [B, T, V]).

Four forms of the same network, with one weight layout (per layer: kernel, recurrent_kernel,
bias; then the output layer), so weights move between them with set_weights:
- "stacked": keras.layers.RNN over StackedRNNCells — the book's concise design;
- "layers":  one keras.layers.GRU/LSTM/SimpleRNN per depth — what reaches cuDNN on a GPU;
- "fused":   FusedRNNStack — the first layer's one-hot projection precomputed as a [V, gates]
             table and looked up per step (no [T, B, gates] tensor to copy), the time loop
             unrolled in the graph doing only the recurrent part, layers interleaved so layer l+1
             at step t runs beside layer l at step t+1.
- "native":  NativeRNNStack — one C++ op per layer runs the whole sequence (trainer/native.py), with
             each layer's input projection and the weight gradients as single large matmuls (up to
             64 units the backward op sums the recurrent kernel's gradient itself). GRU and
             LSTM, CPU, training only (exports keep standard ops); float32, or under mixed precision
             bfloat16 products with float32 accumulation where the CPU has AVX512_BF16.
`--backend-form auto` picks among them from bench.forms' measurements (resolve_form).
"""
from __future__ import annotations

import warnings

import keras
import tensorflow as tf
from keras import ops

from trainer import cells as cells_lib
from trainer.config import WEIGHT_DROP_FORMS, ModelConfig
from trainer.forms import measured_form


@keras.saving.register_keras_serializable(package="deep_rnn")
class OneHot(keras.layers.Layer):
    """ids [B, T] → one-hot [B, T, depth], the book's input encoding."""

    def __init__(self, depth: int, **kwargs):
        super().__init__(**kwargs)
        self.depth = depth

    def call(self, ids):
        return ops.one_hot(ops.cast(ids, "int32"), self.depth, dtype=self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "depth": self.depth}


@keras.saving.register_keras_serializable(package="deep_rnn")
class ActivationRegularization(keras.layers.Layer):
    """AWD-LSTM's activation regularisers on the top layer's outputs h [B, T, h], in training only:
    ar · mean(h²) (AR: small activations) + tar · mean((h_t − h_{t−1})²) (TAR: slowly changing ones),
    added to the loss. The identity on its input. (Merity et al. apply AR after the output dropout; here
    both act on the undropped outputs, which only rescales AR by the dropout's keep probability.)"""

    def __init__(self, ar: float = 0.0, tar: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.ar, self.tar = ar, tar

    def call(self, hidden, training=None):
        if training:
            hidden32 = ops.cast(hidden, "float32")
            steps = ops.square(hidden32[:, 1:] - hidden32[:, :-1])                   # [B, T - 1, h]
            tar = tf.math.divide_no_nan(ops.sum(steps), tf.cast(tf.size(steps), "float32"))  # 0 when T = 1
            self.add_loss(self.ar * ops.mean(ops.square(hidden32)) + self.tar * tar)
        return hidden

    def get_config(self):
        return {**super().get_config(), "ar": self.ar, "tar": self.tar}


@keras.saving.register_keras_serializable(package="deep_rnn")
class FusedRNNStack(keras.layers.Layer):
    """L recurrent layers over token ids, computed with trainer.cells' split maths.

    Holds ordinary Keras cells (so weights and checkpoints match the other forms) but runs the
    sequence itself: ids [B, T] → top-layer outputs [B, T, h].
    """

    def __init__(self, cell: str, num_layers: int, num_hiddens: int, vocab_size: int,
                 dropout: float = 0.0, return_state: bool = False, weight_drop: float = 0.0,
                 input_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.cell, self.num_layers, self.num_hiddens = cell, num_layers, num_hiddens
        self.vocab_size, self.dropout, self.return_state = vocab_size, dropout, return_state
        self.weight_drop, self.input_dropout = weight_drop, input_dropout
        self.cells = [cells_lib.make_cell(cell, num_hiddens, name=f"cell_{i}") for i in range(num_layers)]

    def build(self, input_shape):
        for i, cell in enumerate(self.cells):
            cell.build((None, self.vocab_size if i == 0 else self.num_hiddens))

    def _dropout_masks(self, batch, training):
        # one mask per sequence and unit (as Keras cells' input dropout), for layers 1..L-1
        if not (training and self.dropout > 0):
            return [None] * self.num_layers
        keep = 1.0 - self.dropout
        return [None] + [tf.cast(tf.random.uniform((batch, self.num_hiddens)) < keep, self.compute_dtype) / keep
                         for _ in range(1, self.num_layers)]

    def _input_scales(self, ids, training):
        """ids [B, T] → [B, T] factors on each step's input projection x W (not the bias), or None when not
        dropping: one mask [B, V] per sequence, so a character type is dropped (0) or kept (1 / keep) at every
        step of its row — Dropout(noise_shape=(B, 1, V)) on the one-hot inputs, which the other forms apply."""
        if not (training and self.input_dropout > 0):
            return None
        keep = 1.0 - self.input_dropout
        mask = tf.cast(tf.random.uniform((tf.shape(ids)[0], self.vocab_size)) < keep, self.compute_dtype) / keep
        return tf.gather(mask, ids, batch_dims=1)

    def _drop_recurrent_weights(self, w: cells_lib.CellWeights, training) -> cells_lib.CellWeights:
        """AWD-LSTM's weight drop (DropConnect, Wan et al. 2013): when training, each recurrent weight is
        zeroed with probability weight_drop (the rest scaled by 1 / keep), one mask [h, gates] per batch,
        the same for every row and step. The gradient reaches the kept weights through the mask."""
        if not (training and self.weight_drop > 0):
            return w
        keep = 1.0 - self.weight_drop
        kernel = w.recurrent_kernel
        mask = tf.cast(tf.random.uniform(tf.shape(kernel)) < keep, kernel.dtype) / tf.cast(keep, kernel.dtype)
        return w._replace(recurrent_kernel=kernel * mask)

    def initial_states(self, batch, states=None) -> list[list]:
        """Per layer, its state tensors [B, h]: zeros, or the flat list `states` (layer by layer) regrouped."""
        if states is None:
            return [[tf.zeros((batch, self.num_hiddens), self.compute_dtype)] * cells_lib.num_states(c)
                    for c in self.cells]
        nested, k = [], 0
        for c in self.cells:
            n = cells_lib.num_states(c)
            nested.append([tf.cast(s, self.compute_dtype) for s in states[k:k + n]])
            k += n
        return nested

    def _result(self, outputs, final_states):
        """outputs [B, T, h], or [outputs, *flat final states] for a layer built with return_state."""
        if not self.return_state:
            return outputs
        return [outputs] + [s for layer in final_states for s in layer]

    def call(self, ids, states=None, training=False):
        """ids [B, T] (and optionally the flat initial states, [B, h] each) → outputs [B, T, h]
        (and the flat final states when return_state)."""
        ids = tf.cast(ids, tf.int32)
        batch = tf.shape(ids)[0]
        masks = self._dropout_masks(batch, training)
        weights = [self._drop_recurrent_weights(cells_lib.read_weights(c, self.compute_dtype), training)
                   for c in self.cells]
        table = cells_lib.input_table(weights[0])  # [V, G]: the first layer's projection is a row lookup
        ids_by_step = tf.transpose(ids)              # [T, B]: each step's ids contiguous
        scales = self._input_scales(ids, training)   # [B, T] or None
        scales_by_step = None if scales is None else tf.transpose(scales)  # [T, B]
        states = self.initial_states(batch, states)

        def step(step_ids, states, step_scales=None):
            # step_ids [B]; the lookup happens per step, so no [T, B, G] projection is materialised
            out = None
            for i, w in enumerate(weights):
                if i == 0 and step_scales is None:
                    xp = cells_lib.gather_rows(table, step_ids)
                elif i == 0:  # input dropout scales x W, not the bias
                    xp = cells_lib.gather_rows(w.kernel, step_ids) * step_scales[:, None] + w.input_bias
                else:
                    xp = cells_lib.project_inputs(w, out if masks[i] is None else out * masks[i])
                out, states[i] = cells_lib.recurrent_step(w, xp, states[i])
            return out, states

        steps = ids.shape[1]
        if steps is not None:  # static length: unroll, so TF can overlap layers and steps
            outputs = []
            for t, step_ids in enumerate(tf.unstack(ids_by_step, axis=0)):
                out, states = step(step_ids, states, None if scales_by_step is None else scales_by_step[t])
                outputs.append(out)
            return self._result(tf.transpose(tf.stack(outputs, axis=0), [1, 0, 2]), states)  # [B, T, h]
        flat = [s for layer in states for s in layer]

        def scan_fn(carry, inputs):
            nested, k = [], 0
            for c in self.cells:
                n = cells_lib.num_states(c)
                nested.append(list(carry[1][k:k + n]))
                k += n
            step_ids, step_scales = inputs if scales_by_step is not None else (inputs, None)
            out, new = step(step_ids, nested, step_scales)
            return out, [s for layer in new for s in layer]

        elems = ids_by_step if scales_by_step is None else (ids_by_step, scales_by_step)
        outputs, carried = tf.scan(scan_fn, elems,
                                   initializer=(tf.zeros((batch, self.num_hiddens), self.compute_dtype), flat))
        # carried holds every step's states [T, B, h]: the final ones are the last row (T ≥ 1)
        final = self.initial_states(batch, [c[-1] for c in carried]) if self.return_state else None
        return self._result(tf.transpose(outputs, [1, 0, 2]), final)

    def get_config(self):
        return {**super().get_config(), "cell": self.cell, "num_layers": self.num_layers,
                "num_hiddens": self.num_hiddens, "vocab_size": self.vocab_size, "dropout": self.dropout,
                "return_state": self.return_state, "weight_drop": self.weight_drop,
                "input_dropout": self.input_dropout}


@keras.saving.register_keras_serializable(package="deep_rnn")
class NativeRNNStack(FusedRNNStack):
    """FusedRNNStack's cells and weights, run layer by layer through the native whole-sequence kernels."""

    def call(self, ids, states=None, training=False):
        from trainer import native

        ok, why = native.available()
        if not ok:  # e.g. a saved model loaded for export on a machine without a compiler: same maths
            warnings.warn(f"native RNN kernels unavailable ({why}); running the fused graph form", stacklevel=2)
            return super().call(ids, states=states, training=training)
        ids = tf.cast(ids, tf.int32)
        ids_by_step = tf.transpose(ids)                               # [T, B]
        batch = tf.shape(ids_by_step)[1]
        masks = self._dropout_masks(batch, training)
        scales = self._input_scales(ids, training)  # [B, T] or None
        initial = [[tf.cast(s, tf.float32) for s in layer] for layer in self.initial_states(batch, states)]
        bf16 = self.compute_dtype == "bfloat16" and native.has_bf16()  # mixed precision on a CPU that has it
        if self.compute_dtype == "bfloat16" and not bf16:
            warnings.warn("mixed precision: this CPU has no AVX512_BF16, so the native kernels run their "
                          "recurrent products in float32", stacklevel=2)
        out, final = None, []
        for i, cell in enumerate(self.cells):
            w = self._drop_recurrent_weights(cells_lib.read_weights(cell, tf.float32), training)
            if i == 0:  # x W for one-hot x: rows of W (the kernels add the bias)
                xp = native.lookup_rows(tf.cast(w.kernel, tf.bfloat16 if bf16 else tf.float32), ids_by_step)
                if scales is not None:  # input dropout: [T, B, G] · [T, B, 1]
                    xp = xp * tf.cast(tf.transpose(scales)[:, :, None], xp.dtype)
            else:
                x = out if masks[i] is None else out * tf.cast(masks[i], out.dtype)       # mask [B, H]
                xp = native.project(x, w.kernel, bf16)                                    # [T, B, G]
            out, layer_final = native.run_layer(w, xp, initial[i], bf16)                 # [T, B, H]
            final.append([tf.cast(s, self.compute_dtype) for s in layer_final])
        return self._result(tf.cast(tf.transpose(out, [1, 0, 2]), self.compute_dtype), final)  # [B, T, H]


_LAYER_CLASSES = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM, "rnn": keras.layers.SimpleRNN}


def num_state_tensors(cfg: ModelConfig) -> int:
    """How many [B, h] tensors make the recurrent state: h per layer, and c too for LSTM."""
    return cfg.num_layers * (2 if cfg.cell == "lstm" else 1)


def _drop_input_characters(cfg: ModelConfig, one_hot):
    """one-hot [B, T, V] with cfg.input_dropout: one mask per sequence and character type, at every step."""
    if not cfg.input_dropout:
        return one_hot
    return keras.layers.Dropout(cfg.input_dropout, noise_shape=(None, 1, cfg.vocab_size),
                                name="input_dropout")(one_hot)


def build_model(cfg: ModelConfig, carry_state: bool = False) -> keras.Model:
    """An uncompiled model: ids [B, T] (int32) → logits [B, T, vocab] (float32).

    carry_state: the same network (same weights, same order) taking the flat initial states as more
    inputs and returning the final states after the logits, [ids, *states] → [logits, *states], each
    state [B, h] (layer by layer; LSTM h then c). Used for stateful training and stream evaluation.
    """
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    states = ([keras.Input(shape=(cfg.num_hiddens,), name=f"state_{i}") for i in range(num_state_tensors(cfg))]
              if carry_state else None)
    final = []
    if cfg.form in ("fused", "native"):
        if cfg.form == "native" and cfg.cell not in ("gru", "lstm"):
            raise ValueError(f"the native form has kernels for gru and lstm, not {cfg.cell!r}; use 'fused'")
        stack_class = NativeRNNStack if cfg.form == "native" else FusedRNNStack
        stack = stack_class(cfg.cell, cfg.num_layers, cfg.num_hiddens, cfg.vocab_size, cfg.dropout,
                            return_state=carry_state, weight_drop=cfg.weight_drop,
                            input_dropout=cfg.input_dropout, name="rnn")
        hidden = stack(ids, states=states) if carry_state else stack(ids)
        if carry_state:
            hidden, final = hidden[0], list(hidden[1:])
    elif cfg.form == "stacked":
        stack = keras.layers.StackedRNNCells(
            [cells_lib.make_cell(cfg.cell, cfg.num_hiddens, dropout=cfg.dropout if i else 0.0, name=f"cell_{i}")
             for i in range(cfg.num_layers)])
        rnn = keras.layers.RNN(stack, return_sequences=True, return_state=carry_state, name="rnn")
        one_hot = _drop_input_characters(cfg, OneHot(cfg.vocab_size)(ids))
        if carry_state:
            per_layer = len(states) // cfg.num_layers
            nested = [states[i * per_layer:(i + 1) * per_layer] for i in range(cfg.num_layers)]
            hidden, *ends = rnn(one_hot, initial_state=[s if per_layer > 1 else s[0] for s in nested])
            final = [t for end in ends for t in (end if isinstance(end, (list, tuple)) else [end])]
        else:
            hidden = rnn(one_hot)
    else:
        if cfg.cell == "scratch":
            raise ValueError("the scratch cell has no cuDNN layer; use form 'stacked' or 'fused'")
        hidden = _drop_input_characters(cfg, OneHot(cfg.vocab_size)(ids))
        per_layer = num_state_tensors(cfg) // cfg.num_layers
        for i in range(cfg.num_layers):
            if i and cfg.dropout:  # same mask at every step, like the cells' input dropout
                hidden = keras.layers.Dropout(cfg.dropout, noise_shape=(None, 1, cfg.num_hiddens))(hidden)
            layer = _LAYER_CLASSES[cfg.cell](cfg.num_hiddens, return_sequences=True, return_state=carry_state,
                                             name=f"rnn_{i}")
            if carry_state:
                hidden, *ends = layer(hidden, initial_state=states[i * per_layer:(i + 1) * per_layer])
                final += ends
            else:
                hidden = layer(hidden)
    if cfg.ar or cfg.tar:  # identity at inference; adds the penalty to the training loss
        hidden = ActivationRegularization(cfg.ar, cfg.tar, name="activation_regularization")(hidden)
    if cfg.dropout:  # on the top layer's outputs too: every non-recurrent connection (Zaremba et al., 2014)
        hidden = keras.layers.Dropout(cfg.dropout, name="output_dropout")(hidden)
    logits = keras.layers.Dense(cfg.vocab_size, dtype="float32", name="logits")(hidden)
    name = f"deep_{cfg.cell}_{cfg.num_layers}x{cfg.num_hiddens}"
    if carry_state:
        return keras.Model([ids, *states], [logits, *final], name=name + "_carried")
    return keras.Model(ids, logits, name=name)


def model_cells(model: keras.Model) -> list:
    """The model's recurrent cells, bottom to top, whatever its form."""
    layer = next((x for x in model.layers if x.name == "rnn"), None)
    if isinstance(layer, FusedRNNStack):
        return list(layer.cells)
    if isinstance(layer, keras.layers.RNN):
        return list(layer.cell.cells)
    return [x.cell for x in model.layers if x.name.startswith("rnn_")]


def model_form(model: keras.Model) -> str:
    """The form a built model runs (a stateful trainer's CarriedStateModel: its core network's)."""
    model = getattr(model, "core", model)
    layer = next((x for x in model.layers if x.name == "rnn"), None)
    if isinstance(layer, NativeRNNStack):
        return "native"
    return "fused" if isinstance(layer, FusedRNNStack) else "stacked" if layer is not None else "layers"


def resolve_form(requested: str, cell: str, num_hiddens: int = 32, mixed_precision: bool = False,
                 weight_drop: float = 0.0) -> str:
    """'auto' → the form bench.forms measured fastest for this cell, width and device (trainer/forms_table.json).

    With weight drop, only the forms that run the recurrence themselves are correct (WEIGHT_DROP_FORMS):
    where the stacked cells or the cuDNN layers measured fastest, the fused stack runs instead.

    Without a measurement: the cuDNN-eligible layers on a GPU, the fused stack on a CPU. The native kernels
    are CPU kernels (bfloat16 products only with AVX512_BF16): where they would be chosen but cannot be
    built or loaded, or mixed precision asks for bfloat16 they lack here, the fused stack runs instead and
    a warning says why (tests/test_native.py fails when that happens under `make test`).
    """
    if requested != "auto":
        return requested
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    form = measured_form(cell, num_hiddens, "GPU" if on_gpu else "CPU", mixed_precision)
    if form is None:
        form = "layers" if on_gpu and cell in ("gru", "lstm") else "fused"
    if form == "native":
        from trainer import native

        ok, why = native.available()
        if ok and cell not in ("gru", "lstm"):
            ok, why = False, "the native kernels are gru/lstm kernels"
        if ok and mixed_precision and not native.has_bf16():
            ok, why = False, "mixed precision needs bfloat16 products, which need AVX512_BF16 (not on this CPU)"
        if not ok:
            warnings.warn(f"--backend-form auto: the native form is fastest here but {why}; using 'fused'",
                          stacklevel=2)
            form = "fused"
    if form == "layers" and cell == "scratch":
        form = "fused"
    if weight_drop and form not in WEIGHT_DROP_FORMS:
        warnings.warn(f"--backend-form auto: the {form!r} form is fastest here, but weight drop needs a form that "
                      f"runs the recurrence itself; using 'fused'", stacklevel=2)
        form = "fused"
    return form


def graph_op_types(model, steps: int = 8) -> set[str]:
    """The op types a training step of the model runs (function bodies included): to check which kernels
    a form really uses (CudnnRNN on a GPU, the native DeepRnn* ops, never a silent fallback)."""
    fn = tf.function(lambda x: model(x, training=True))
    return set(function_op_types(fn.get_concrete_function(tf.TensorSpec([2, steps], tf.int32))))


def function_op_types(concrete_function) -> list[str]:
    """The type of every op a traced function runs, the bodies of the functions it calls included (one entry
    per op, so counts show how often an op runs)."""
    graph_def = concrete_function.graph.as_graph_def()  # its library holds every function it calls, nested too
    return ([node.op for node in graph_def.node]
            + [node.op for function in graph_def.library.function for node in function.node_def])
