"""The native form: whole-sequence C++ kernels (trainer/kernels/rnn_sequence.cc) built by make for this CPU.

Tested like Keras tests its cells: shapes, the same numbers and gradients as Keras's own cells, one training
step, weights moving between forms; plus: `auto` really runs the kernels where bench.forms measured them
fastest (no silent fallback), and exports never contain them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT
from trainer import native
from trainer.config import ModelConfig, TrainConfig
from trainer.model import build_model, function_op_types, graph_op_types, measured_form, model_form, resolve_form


def test_kernels_build_and_load_here():
    """make builds them for this CPU; if this fails, `auto` would fall back (tested below), so fail loudly."""
    ok, why = native.available()
    assert ok, why


def _logits_and_grads(model, ids, targets):
    with tf.GradientTape() as tape:
        logits = model(ids, training=True)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True))
    return logits.numpy(), [g.numpy() for g in tape.gradient(loss, model.trainable_weights)]


@pytest.mark.parametrize("kernel_gradient", ["summed in the op", "one matmul"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_native_equals_keras_cells_forward_and_backward(cell, kernel_gradient, monkeypatch):
    import keras

    monkeypatch.setattr(native, "FUSED_KERNEL_GRADIENT_MAX_UNITS", 64 if kernel_gradient == "summed in the op" else 0)

    keras.utils.set_random_seed(3)
    reference = build_model(ModelConfig(vocab_size=11, cell=cell, num_layers=3, num_hiddens=8, form="stacked"))
    fast = build_model(ModelConfig(vocab_size=11, cell=cell, num_layers=3, num_hiddens=8, form="native"))
    assert len(fast.get_weights()) == len(reference.get_weights())  # one weight layout
    fast.set_weights(reference.get_weights())
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, 11, (5, 7)).astype("int32"), rng.integers(0, 11, (5, 7))
    (want_logits, want_grads), (got_logits, got_grads) = (_logits_and_grads(m, ids, targets)
                                                          for m in (reference, fast))
    assert got_logits.shape == (5, 7, 11)
    np.testing.assert_allclose(got_logits, want_logits, atol=1e-6)
    for got, want in zip(got_grads, want_grads):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert "DeepRnn" + cell.capitalize() + "Sequence" in graph_op_types(fast)


def test_gru_kernel_numbers_with_constant_weights():
    """Hand-computed: H = 1, U = 0.5 for every gate, zero biases, xp = 0.1 for every gate, h0 = 0."""
    library = native.load()
    xp = tf.fill([2, 1, 3], 0.1)
    h, _ = library.deep_rnn_gru_sequence(xp, tf.zeros([3]), tf.zeros([1, 1]), tf.fill([1, 3], 0.5), tf.zeros([3]))
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h1 = (1 - sig(0.1)) * np.tanh(0.1)                       # z h0 + (1 - z) tanh(x_h + r·0)
    z2, r2 = sig(0.1 + 0.5 * h1), sig(0.1 + 0.5 * h1)
    h2 = z2 * h1 + (1 - z2) * np.tanh(0.1 + r2 * 0.5 * h1)
    np.testing.assert_allclose(h.numpy().ravel(), [h1, h2], rtol=1e-6)


def _reference_lstm(xp, h, c, kernel):  # NumPy, Keras's LSTMCell maths: xp [T, B, 4H] → h [T, B, H]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    out = []
    for x in xp:
        i, f, g, o = np.split(x + h @ kernel, 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        out.append(h)
    return np.stack(out)


@pytest.mark.parametrize("batch", [1, 2, 5, 7, 9, 11, 12, 13, 16, 23])
def test_every_batch_split_and_row_tail_gives_the_same_numbers(batch):
    """The batch is split into one row range per thread and each range runs the products in blocks of 6 rows,
    then one block of the last 1–5: these batches reach every tail. Forward against NumPy; backward: every
    row's gradient equals the one from running that row alone (rows are independent through time)."""
    library = native.load()
    rng = np.random.default_rng(batch)
    steps, units = 4, 37  # 4 · 37 = 148 gate columns: two 64-column panels and 16-column tails
    xp = rng.normal(size=(steps, batch, 4 * units)).astype("float32")
    h0 = (rng.normal(size=(batch, units)) * 0.3).astype("float32")
    kernel = (rng.normal(size=(units, 4 * units)) / units ** 0.5).astype("float32")
    dh = rng.normal(size=(steps, batch, units)).astype("float32")

    def run(rows):
        h, c, g = library.deep_rnn_lstm_sequence(xp[:, rows], np.zeros(4 * units, "float32"), h0[rows], h0[rows],
                                                 kernel)
        return h.numpy(), library.deep_rnn_lstm_sequence_grad(h0[rows], h0[rows], kernel, h, c, g, dh[:, rows],
                                                              dh[:, rows])[0].numpy()

    h, dxp = run(slice(None))
    np.testing.assert_allclose(h, _reference_lstm(xp, h0, h0, kernel), atol=2e-5)
    for row in range(batch):
        alone = run(slice(row, row + 1))
        np.testing.assert_allclose(h[:, row:row + 1], alone[0], atol=1e-6)
        np.testing.assert_allclose(dxp[:, row:row + 1], alone[1], atol=1e-6)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bfloat16_xp_and_the_input_bias_inside_the_op(cell):
    """xp may come in bfloat16 (mixed precision's matmul output) and its gradient then goes out in bfloat16:
    the same numbers as float32 xp holding the same values, dxp rounded to nearest even; the input bias added
    inside the op equals it added to xp outside, and its gradient is dxp summed over steps and rows. Sizes
    with tails (13 rows over two threads, 3 · 21 and 4 · 21 columns) reach the conversions' scalar ends."""
    library = native.load()
    rng = np.random.default_rng(8)
    steps, batch, units = 5, 13, 21
    gates = 3 if cell == "gru" else 4
    xp16 = tf.cast(rng.normal(size=(steps, batch, gates * units)), tf.bfloat16)
    xp = tf.cast(xp16, tf.float32)  # the same values in float32
    h0 = tf.constant(rng.normal(size=(batch, units)) * 0.3, tf.float32)
    kernel = tf.constant(rng.normal(size=(units, gates * units)) / units ** 0.5, tf.float32)
    bias = tf.constant(rng.normal(size=(gates * units,)) * 0.1, tf.float32)
    rec_bias = tf.constant(rng.normal(size=(gates * units,)) * 0.1, tf.float32)
    dh = tf.constant(rng.normal(size=(steps, batch, units)), tf.float32)

    def run(x, b):  # → h, dxp, d_input_bias, and the GRU's dhp and d_recurrent_bias
        if cell == "gru":
            h, g = library.deep_rnn_gru_sequence(x, b, h0, kernel, rec_bias)
            dxp, dhp, _, d_b, d_rb, _ = library.deep_rnn_gru_sequence_grad(h0, kernel, h, g, dh, T=x.dtype)
            return h, dxp, d_b, dhp, d_rb
        h, c, g = library.deep_rnn_lstm_sequence(x, b, h0, h0, kernel)
        dxp, _, _, d_b, _ = library.deep_rnn_lstm_sequence_grad(h0, h0, kernel, h, c, g, dh, dh, T=x.dtype)
        return h, dxp, d_b, None, None

    outside, inside, half = run(xp + bias, tf.zeros_like(bias)), run(xp, bias), run(xp16, bias)
    np.testing.assert_allclose(inside[0], outside[0], atol=1e-6)
    np.testing.assert_allclose(inside[1], outside[1], atol=1e-6)
    np.testing.assert_allclose(inside[2], tf.reduce_sum(inside[1], [0, 1]), rtol=1e-5, atol=1e-5)
    assert half[1].dtype == tf.bfloat16
    np.testing.assert_array_equal(half[0], inside[0])
    np.testing.assert_array_equal(tf.cast(half[1], tf.float32), tf.cast(tf.cast(inside[1], tf.bfloat16), tf.float32))
    np.testing.assert_array_equal(half[2], inside[2])  # summed in float32 inside the op, not from rounded dxp
    if cell == "gru":
        np.testing.assert_allclose(inside[4], tf.reduce_sum(inside[3], [0, 1]), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(half[4], inside[4])


def _random_layer(cell, steps, batch, units, seed=5):
    """Float32 inputs for one layer's ops: xp [T, B, G·H], h0 [B, H], kernel [H, G·H], a bias [G·H], dh [T, B, H]."""
    rng = np.random.default_rng(seed)
    gates = 3 if cell == "gru" else 4
    xp = tf.constant(rng.normal(size=(steps, batch, gates * units)), tf.float32)
    h0 = tf.constant(rng.normal(size=(batch, units)) * 0.3, tf.float32)
    kernel = tf.constant(rng.normal(size=(units, gates * units)) / units ** 0.5, tf.float32)
    bias = tf.constant(rng.normal(size=(gates * units,)) * 0.1, tf.float32)
    dh = tf.constant(rng.normal(size=(steps, batch, units)), tf.float32)
    return xp, h0, kernel, bias, dh


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_kernel_gradient_summed_in_the_op_equals_the_matmul_over_the_sequence(cell, bf16):
    """kernel_grad: the backward op sums Σ_t h_{t-1}ᵀ d(h_{t-1} U)_t itself (float32 products) and leaves
    the GRU's dhp empty; everything else it gives is unchanged. 13 rows over two threads, 21 units."""
    if bf16:
        _bf16_or_skip()
    library = native.load()
    units, gates = 21, (3 if cell == "gru" else 4)
    xp, h0, kernel, bias, dh = _random_layer(cell, 6, 13, units)
    if cell == "gru":
        h, g = library.deep_rnn_gru_sequence(xp, bias, h0, kernel, bias, bf16=bf16)
        plain = library.deep_rnn_gru_sequence_grad(h0, kernel, h, g, dh, bf16=bf16)
        fused = library.deep_rnn_gru_sequence_grad(h0, kernel, h, g, dh, bf16=bf16, kernel_grad=True)
        d_products, same = plain[1], [0, 2, 3, 4]
        assert fused[1].shape == (0, 0, 0) and plain[5].shape == (0, 0)
    else:
        h, c, g = library.deep_rnn_lstm_sequence(xp, bias, h0, h0, kernel, bf16=bf16)
        plain = library.deep_rnn_lstm_sequence_grad(h0, h0, kernel, h, c, g, dh, dh, bf16=bf16)
        fused = library.deep_rnn_lstm_sequence_grad(h0, h0, kernel, h, c, g, dh, dh, bf16=bf16, kernel_grad=True)
        d_products, same = plain[0], [0, 1, 2, 3]
        assert plain[4].shape == (0, 0)
    for i in same:
        np.testing.assert_array_equal(fused[i], plain[i])
    previous = np.concatenate([h0.numpy()[None], h.numpy()[:-1]]).reshape(-1, units)   # [T·B, H]
    want = previous.T.astype(np.float64) @ d_products.numpy().reshape(-1, gates * units)  # [H, G·H]
    assert fused[-1].shape == (units, gates * units)
    np.testing.assert_allclose(fused[-1], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_lookup_gradient_adds_each_rows_gradient_into_its_ids_row(dtype):
    """DeepRnnLookupGrad = tf.gather's own gradient (a segment sum by id), in dy's type, float32 sums;
    100 columns: six 16-column blocks and a tail over the threads."""
    library = native.load()
    rng = np.random.default_rng(2)
    ids = tf.constant(rng.integers(0, 7, size=(45,)), tf.int32)
    dy = tf.cast(tf.constant(rng.normal(size=(45, 100)), tf.float32), dtype)
    got = library.deep_rnn_lookup_grad(ids, dy, 9)
    assert got.dtype == dtype and got.shape == (9, 100)
    want = tf.math.unsorted_segment_sum(tf.cast(dy, tf.float64), ids, 9)
    np.testing.assert_allclose(tf.cast(got, tf.float64), want, rtol=1e-2 if dtype == tf.bfloat16 else 1e-6,
                               atol=1e-2 if dtype == tf.bfloat16 else 1e-6)
    assert not np.any(got.numpy()[7:])  # rows no id names stay zero
    table = tf.Variable(rng.normal(size=(9, 100)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(native.lookup_rows(table, tf.reshape(ids, [5, 9])) * tf.reshape(tf.cast(dy, tf.float32),
                                                                                              [5, 9, 100]))
    np.testing.assert_allclose(tape.gradient(loss, table), tf.cast(got, tf.float32), rtol=1e-2, atol=1e-2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"ids\[3\] = 9 is not in \[0, 9\)"):
        library.deep_rnn_lookup_grad(tf.constant([0, 1, 2, 9]), tf.zeros([4, 3]), 9)


@pytest.mark.parametrize("vocab", [4, 16, 28, 65])
def test_fused_cross_entropy_equals_the_standard_loss_and_its_gradient(vocab):
    """DeepRnnSoftmaxCrossEntropy = token_cross_entropy's standard ops, value and gradient, at vocabularies under,
    at and over one 16-column register; rows 1000 (blocks of 16 and 64 with tails, over the threads)."""
    from trainer.metrics import token_cross_entropy

    rng = np.random.default_rng(3)
    logits = tf.constant(rng.normal(size=(10, 100, vocab)) * 4, tf.float32)
    labels = tf.constant(rng.integers(0, vocab, size=(10, 100)), tf.int32)
    weights = tf.constant(rng.uniform(size=(10, 100)), tf.float32)  # the upstream gradient differs by token
    results = {}
    for fused in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = token_cross_entropy(labels, logits, fused=fused)
            total = tf.reduce_sum(loss * weights)
        results[fused] = (loss.numpy(), tape.gradient(total, logits).numpy())
    assert results[True][0].shape == (10, 100)
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[True][1], results[False][1], rtol=1e-5, atol=1e-6)
    forward_only = token_cross_entropy(labels, logits, fused=True, gradient=False)
    np.testing.assert_allclose(forward_only, results[True][0], rtol=0, atol=0)


@pytest.mark.reliability
def test_fused_cross_entropy_is_exact_at_large_logits():
    """The loss is log Σ exp(z − max) − (z[label] − max): no two large terms cancel (hostile pass 2, item 14:
    log Σ + max − z[label] gave 0 instead of log 2 for equal logits of 1e8, and 0.0078 instead of 0.0067)."""
    library = native.load()
    biggest = float(np.finfo(np.float32).max)
    for value in (1e8, -1e8, -1e30, -biggest, biggest):
        loss, _ = library.deep_rnn_softmax_cross_entropy(tf.fill([3, 2], value), tf.constant([0, 1, 0]))
        np.testing.assert_allclose(loss, np.full(3, np.log(2.0)), rtol=1e-6, err_msg=str(value))
    logits, labels = tf.constant([[1e5, 1e5 - 5.0], [1e5 - 5.0, 1e5]]), tf.constant([0, 0])
    loss, backprop = library.deep_rnn_softmax_cross_entropy(logits, labels)
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(loss, [np.log1p(np.exp(-5.0)), 5.0 + np.log1p(np.exp(-5.0))], rtol=1e-5)
    np.testing.assert_allclose(backprop, tf.nn.softmax(logits) - tf.one_hot(labels, 2), atol=1e-6)


def test_fused_cross_entropy_numbers_and_refusals():
    """Equal logits: every loss is log V and the gradient 1/V − one_hot; labels outside the vocabulary and
    differentiating the loss-only op are errors, not silent zeros."""
    library = native.load()
    loss, backprop = library.deep_rnn_softmax_cross_entropy(tf.zeros([3, 4]), tf.constant([0, 3, 1]))
    np.testing.assert_allclose(loss, np.full(3, np.log(4.0)), rtol=1e-6)
    np.testing.assert_allclose(backprop, np.full((3, 4), 0.25) - np.eye(4)[[0, 3, 1]], atol=1e-7)
    loss, backprop = library.deep_rnn_softmax_cross_entropy(tf.constant([[1000.0, 0.0]]), tf.constant([1]),
                                                            gradient=False)
    np.testing.assert_allclose(loss, [1000.0], rtol=1e-6)  # no overflow: the row's max is taken out first
    assert backprop.shape == (0, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels\[1\] = 4 is not in \[0, 4\)"):
        library.deep_rnn_softmax_cross_entropy(tf.zeros([2, 4]), tf.constant([0, 4]))
    logits = tf.zeros([2, 4])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = native.softmax_cross_entropy(tf.constant([0, 1]), logits, gradient=False)
    with pytest.raises(ValueError, match="without gradient=True"):
        tape.gradient(loss, logits)


def _train_step_op_types(model, x, y) -> list[str]:
    """Every op a compiled model's Keras train_step runs (loss, gradients, metrics, optimizer), nested included."""
    model.train_on_batch(x, y)  # builds the optimizer and metrics first
    spec = tf.TensorSpec(x.shape, tf.int32)
    return function_op_types(tf.function(model.train_step).get_concrete_function((spec, spec)))


def test_native_form_trains_with_the_fused_loss_and_never_falls_back_silently(monkeypatch):
    """compile_model gives the native form the kernels' loss op (the loss and both metrics); other forms keep
    standard ops; without the kernels the loss warns and runs the same maths as standard ops."""
    from trainer.metrics import token_cross_entropy
    from trainer.training import compile_model

    cfg = TrainConfig.from_flat(num_hiddens=8, batch_size=4, optimizer="adam", lr=1e-2)
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 11, (4, 6)).astype("int32"), rng.integers(0, 11, (4, 6)).astype("int32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback warning is a failure here
        types = _train_step_op_types(compile_model(build_model(ModelConfig(vocab_size=11, num_hiddens=8,
                                                                           form="native")), cfg),
                                     x, y)
    assert types.count("DeepRnnSoftmaxCrossEntropy") >= 3 and "OneHot" not in types  # the loss and both metrics
    stacked = _train_step_op_types(compile_model(build_model(ModelConfig(vocab_size=11, num_hiddens=8,
                                                                         form="stacked")), cfg),
                                   x, y)
    assert "DeepRnnSoftmaxCrossEntropy" not in stacked
    monkeypatch.setattr(native, "available", lambda: (False, "no C++ compiler"))
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        fallback = token_cross_entropy(tf.constant(y), tf.zeros([4, 6, 11]), fused=True)
    np.testing.assert_allclose(fallback, np.full((4, 6), np.log(11.0)), rtol=1e-6)


def test_kernel_rejects_inconsistent_shapes():
    library = native.load()
    with pytest.raises(tf.errors.InvalidArgumentError, match="inconsistent shapes"):
        library.deep_rnn_gru_sequence(tf.zeros([3, 2, 12]), tf.zeros([12]), tf.zeros([2, 4]), tf.zeros([4, 9]),
                                      tf.zeros([12]))


def test_native_form_is_gru_and_lstm_only():
    with pytest.raises(ValueError, match="native form"):
        build_model(ModelConfig(vocab_size=11, cell="rnn", form="native"))


def test_one_training_step_and_weights_move_between_forms():
    from trainer.training import compile_model

    cfg = TrainConfig.from_flat(num_hiddens=8, batch_size=4, optimizer="adam", lr=1e-2)
    model = compile_model(build_model(ModelConfig(vocab_size=11, num_hiddens=8, form="native", dropout=0.2)), cfg)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 11, (4, 6)).astype("int32"), rng.integers(0, 11, (4, 6)).astype("int32")
    before = [w.copy() for w in model.get_weights()]
    first = model.train_on_batch(x, y)
    assert all(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
    assert np.isfinite(first[0] if isinstance(first, list) else first)
    for form in ("fused", "stacked"):
        other = build_model(ModelConfig(vocab_size=11, num_hiddens=8, form=form, dropout=0.2))
        other.set_weights(model.get_weights())
        np.testing.assert_allclose(other(x).numpy(), model(x).numpy(), atol=1e-5)


def _forms_file(tmp_path, rows):
    path = tmp_path / "forms.json"
    path.write_text(json.dumps({"rows": rows}))
    return str(path)


def test_auto_picks_the_measured_fastest_form_at_the_nearest_width(tmp_path):
    rows = [dict(cell="gru", size=size, batch=64, device="CPU", form=form, train_tokens_per_s=speed)
            for size, form, speed in [("2x32", "fused", 1.0), ("2x32", "native", 2.0),
                                      ("2x256", "fused", 3.0), ("2x256", "native", 1.0)]]
    path = _forms_file(tmp_path, rows)
    assert measured_form("gru", 48, "CPU", path=path) == "native"
    assert measured_form("gru", 512, "CPU", path=path) == "fused"
    assert measured_form("lstm", 32, "CPU", path=path) is None           # not measured: the caller's default
    assert measured_form("gru", 32, "CPU", mixed_precision=True, path=path) is None


def test_auto_reads_this_cpus_rows_where_it_has_any(tmp_path):
    """bench.forms run on two CPUs: each picks from its own rows; another CPU from the closest one's rows,
    never by comparing speeds across machines."""
    amd, intel = "AMD EPYC 9R14 [avx512f avx512_bf16]", "Intel(R) Xeon(R) Processor [avx512f avx512_bf16 amx_bf16]"
    rows = [dict(cell="lstm", size="2x256", batch=64, device="CPU", precision="mixed", cpu=cpu, form=form,
                 train_tokens_per_s=speed)
            for cpu, form, speed in [(amd, "native", 50.0), (amd, "stacked", 34.0),
                                     (intel, "native", 40.0), (intel, "stacked", 60.0)]]
    path = _forms_file(tmp_path, rows)
    assert measured_form("lstm", 256, "CPU", True, path=path, cpu=amd) == "native"
    assert measured_form("lstm", 256, "CPU", True, path=path, cpu=intel) == "stacked"
    assert measured_form("lstm", 256, "CPU", True, path=path, cpu="Intel Xeon 8375C [avx512f]") == "native"
    assert measured_form("lstm", 256, "CPU", True, path=path,
                         cpu="Intel Xeon 6975P [avx512f avx512_bf16 amx_bf16]") == "stacked"
    legacy = [{k: v for k, v in r.items() if k != "cpu"} for r in rows[:2]]  # rows from before CPUs were recorded
    assert measured_form("lstm", 256, "CPU", True, path=_forms_file(tmp_path, legacy), cpu=intel) == "native"


def test_cpu_signature_names_the_model_and_the_deciding_instruction_sets(tmp_path):
    from trainer.forms import cpu_signature

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
                    "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n\n"
                    "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f\n")
    assert cpu_signature(str(info)) == "Intel(R) Xeon(R) Processor [avx512f avx512_bf16 amx_bf16]"
    info.write_text("model name\t: AMD EPYC 7R13 Processor\nflags\t\t: fpu avx2\n")
    assert cpu_signature(str(info)) == "AMD EPYC 7R13 Processor []"
    assert cpu_signature(str(tmp_path / "missing")) == ""


def test_auto_breaks_a_speed_tie_by_the_shorter_graph_build(tmp_path):
    """Within 5 % of the fastest steady speed the form that builds its graph faster wins (a cost every run
    pays once); beyond that, speed decides whatever the build costs."""
    def rows(native_speed):
        return [dict(cell="gru", size="2x32", batch=1024, device="CPU", form=form, train_tokens_per_s=speed,
                     first_step_s=build) for form, speed, build in [("fused", 100.0, 9.0), ("native", native_speed,
                                                                                            1.0),
                                                                    ("stacked", 97.0, 2.0)]]
    assert measured_form("gru", 32, "CPU", path=_forms_file(tmp_path, rows(96.0))) == "native"
    assert measured_form("gru", 32, "CPU", path=_forms_file(tmp_path, rows(94.0))) == "stacked"
    no_builds = [{k: v for k, v in r.items() if k != "first_step_s"} for r in rows(96.0)]
    assert measured_form("gru", 32, "CPU", path=_forms_file(tmp_path, no_builds)) == "fused"


def test_auto_uses_the_native_kernels_where_measured_fastest_and_never_falls_back_silently(monkeypatch):
    """The committed bench.forms measurements decide; where they say native, the training graph must run it."""
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    for cell, width in (("gru", 32), ("lstm", 32), ("gru", 256), ("lstm", 512)):
        measured = measured_form(cell, width, "GPU" if on_gpu else "CPU")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a fallback warning is a failure here
            form = resolve_form("auto", cell, width)
        assert form == (measured or ("layers" if on_gpu else "fused")), (cell, width)
        model = build_model(ModelConfig(vocab_size=28, cell=cell, num_hiddens=8, form=form))
        assert model_form(model) == form
        if form == "native":
            assert f"DeepRnn{cell.capitalize()}Sequence" in graph_op_types(model)
    # and when the kernels cannot be had, auto says so and runs the same maths in the graph
    monkeypatch.setattr("trainer.model.measured_form", lambda *a, **k: "native")
    monkeypatch.setattr(native, "available", lambda: (False, "no C++ compiler"))
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        assert resolve_form("auto", "gru", 32) == "fused"


def test_a_native_trained_model_exports_standard_ops_only(tiny_data, tmp_path):
    """Trained with the native kernels, exported with standard ops: generation equals the Keras model's."""
    import keras

    from serving.savedmodel import export_model
    from serving.savedmodel import graph_op_types as saved_op_types
    from tests.conftest import TINY_TRAIN
    from trainer.training import train_and_evaluate

    model_dir = tmp_path / "model"
    train_and_evaluate(TrainConfig.from_flat(**{**TINY_TRAIN, "epochs": 1, "form": "native"}), str(tiny_data),
                       str(model_dir))
    model = keras.models.load_model(model_dir / "model.keras")
    assert model_form(model) == "native"
    version_dir = export_model(str(model_dir), str(tmp_path / "export"), "deep_rnn")
    assert not any(t.startswith("DeepRnn") for t in saved_op_types(version_dir))
    served = tf.saved_model.load(version_dir).signatures["serving_default"]
    text = served(prefix=tf.constant(["it has"]), num_chars=tf.constant(12))["text"].numpy()[0].decode()
    from common import vocab as vocab_lib

    vocab = vocab_lib.read_vocab(str(model_dir / "vocab.txt"))
    index = {t: i for i, t in enumerate(vocab)}
    ids = [index[c] for c in "it has"]
    for _ in range(12):  # the book's predict: rerun the whole (native-form) Keras model per character
        ids.append(int(np.argmax(np.asarray(model(np.array([ids], "int32")))[0, -1])))
    assert text == "it has" + "".join(vocab[i] for i in ids[6:])


def _bf16_or_skip():
    if not native.has_bf16():
        pytest.skip("this CPU has no AVX512_BF16: the native kernels' bfloat16 products cannot run here")


_BF16_LAYER_RUN = """
import sys
import numpy as np
from tests.test_native import _bf16_layer_outputs
np.savez(sys.argv[2], *_bf16_layer_outputs(sys.argv[1]))
"""


def _bf16_layer_outputs(cell):
    """h and dxp of one layer's bf16 ops at shapes that use every AMX block (2 × 2 tiles, a last 16 rows and a
    last 16 columns, K in two tile depths with a padded tail) and, per thread, rows past a tile."""
    library = native.load()
    xp, h0, kernel, bias, dh = _random_layer(cell, 5, 70, 44)
    if cell == "gru":
        h, g = library.deep_rnn_gru_sequence(xp, bias, h0, kernel, bias, bf16=True)
        return h.numpy(), library.deep_rnn_gru_sequence_grad(h0, kernel, h, g, dh, bf16=True)[0].numpy()
    h, c, g = library.deep_rnn_lstm_sequence(xp, bias, h0, h0, kernel, bf16=True)
    return h.numpy(), library.deep_rnn_lstm_sequence_grad(h0, h0, kernel, h, c, g, dh, dh, bf16=True)[0].numpy()


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())


def test_bf16_products_run_on_amx_tiles_where_the_cpu_has_them():
    """The fast path is observable: on a CPU with AMX-BF16 (Linux grants its tile state since 5.16) the bf16
    products must run on the tiles, not silently on AVX512_BF16; elsewhere they cannot."""
    _bf16_or_skip()
    assert native.uses_amx() == ({"amx_tile", "amx_bf16"} <= _cpu_flags())


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_amx_tiles_compute_the_avx512_bf16_products(cell, tmp_path):
    """The tile path and the vdpbf16ps path multiply the same bfloat16 pairs and accumulate in float32, in
    another order: they agree to float32 rounding, which can move a later step's bfloat16 rounding by one unit
    (2^-8), 10× tighter than bfloat16 against float32 (the AVX-512 path runs in a process with
    DEEP_RNN_NO_AMX=1)."""
    if not native.uses_amx():
        pytest.skip("no AMX tiles here: the bf16 products run on AVX512_BF16 only")
    out = tmp_path / "avx512.npz"
    proc = subprocess.run([sys.executable, "-c", _BF16_LAYER_RUN, cell, str(out)], cwd=ROOT,
                          env={**os.environ, "DEEP_RNN_NO_AMX": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(out) as avx512:
        for tiles, vector in zip(_bf16_layer_outputs(cell), (avx512["arr_0"], avx512["arr_1"])):
            assert np.abs(vector).max() > 0
            np.testing.assert_allclose(tiles, vector, rtol=0, atol=2e-3 * np.abs(vector).max())


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bf16_products_match_float32_to_bfloat16_rounding(cell):
    """Odd sizes (rows not a multiple of the microkernel's 6, columns not of 16, K odd): bfloat16 products
    with float32 accumulation stay within bfloat16's rounding (8 bits of mantissa) of the float32 kernels,
    forward and backward (the float32 kernels' own numbers are tested against Keras's cells above)."""
    _bf16_or_skip()
    library = native.load()
    xp, h0, kernel, bias, dh = _random_layer(cell, 9, 13, 21)

    def run(bf16):
        if cell == "gru":
            h, g = library.deep_rnn_gru_sequence(xp, bias, h0, kernel, bias, bf16=bf16)
            return h, library.deep_rnn_gru_sequence_grad(h0, kernel, h, g, dh, bf16=bf16)[0]
        h, c, g = library.deep_rnn_lstm_sequence(xp, bias, h0, h0, kernel, bf16=bf16)
        return h, library.deep_rnn_lstm_sequence_grad(h0, h0, kernel, h, c, g, dh, dh, bf16=bf16)[0]

    (h32, d32), (h16, d16) = run(False), run(True)
    assert not np.array_equal(h32.numpy(), h16.numpy())  # the bf16 path really ran
    np.testing.assert_allclose(h16.numpy(), h32.numpy(), atol=2e-2 * np.abs(h32.numpy()).max())
    np.testing.assert_allclose(d16.numpy(), d32.numpy(), atol=2e-2 * np.abs(d32.numpy()).max())


def test_mixed_precision_native_runs_bf16_products_and_matches_float32(monkeypatch):
    """Under mixed_bfloat16 the native model's kernels run with bf16=True (no silent float32 fallback),
    its logits and gradients stay near the float32 stack's, and auto takes it where measured fastest."""
    import keras

    _bf16_or_skip()
    keras.utils.set_random_seed(4)
    reference = build_model(ModelConfig(vocab_size=11, cell="lstm", num_layers=2, num_hiddens=24, form="stacked"))
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        fast = build_model(ModelConfig(vocab_size=11, cell="lstm", num_layers=2, num_hiddens=24, form="native"))
        fast.set_weights(reference.get_weights())
        rng = np.random.default_rng(2)
        ids, targets = rng.integers(0, 11, (7, 10)).astype("int32"), rng.integers(0, 11, (7, 10))
        (want_logits, want_grads), (got_logits, got_grads) = (_logits_and_grads(m, ids, targets)
                                                              for m in (reference, fast))
        fn = tf.function(lambda x: fast(x, training=True)).get_concrete_function(tf.TensorSpec([2, 8], tf.int32))
        ops = [op for f in [fn.graph, *(g.graph for g in fn.graph._functions.values())]
               for op in f.get_operations() if op.type == "DeepRnnLstmSequence"]
        assert ops and all(op.get_attr("bf16") for op in ops)
        monkeypatch.setattr("trainer.model.measured_form", lambda *a, **k: "native")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert resolve_form("auto", "lstm", 24, mixed_precision=True) == "native"
    finally:
        keras.mixed_precision.set_global_policy(previous)
    np.testing.assert_allclose(got_logits, want_logits, atol=3e-2 * np.abs(want_logits).max())
    for got, want in zip(got_grads, want_grads):
        np.testing.assert_allclose(got, want, atol=5e-2 * np.abs(want).max())


def test_auto_leaves_native_under_mixed_precision_without_avx512_bf16(monkeypatch):
    monkeypatch.setattr("trainer.model.measured_form", lambda *a, **k: "native")
    monkeypatch.setattr(native, "has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="AVX512_BF16"):
        assert resolve_form("auto", "gru", 256, mixed_precision=True) == "fused"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_form("auto", "gru", 256) == "native"  # float32 needs no bfloat16


def test_mixed_precision_native_trains_as_well_as_float32_and_exports(tiny_data, tmp_path):
    """The quality check for bfloat16 products: the same seeded run in both precisions reaches nearly the
    same validation perplexity; the mixed-precision model exports with standard ops."""
    from serving.savedmodel import check_portable, export_model
    from tests.conftest import TINY_TRAIN
    from trainer.training import train_and_evaluate

    _bf16_or_skip()
    runs = {}
    for mixed in (False, True):
        cfg = TrainConfig.from_flat(**{**TINY_TRAIN, "epochs": 3, "form": "native", "mixed_precision": mixed})
        runs[mixed] = train_and_evaluate(cfg, str(tiny_data), str(tmp_path / f"mixed{mixed}"))
    assert runs[True]["form"] == runs[False]["form"] == "native"
    assert abs(runs[True]["val_ppl"] / runs[False]["val_ppl"] - 1) < 0.03, (runs[True]["val_ppl"],
                                                                           runs[False]["val_ppl"])
    check_portable(export_model(str(tmp_path / "mixedTrue"), str(tmp_path / "export")))


# Run in a subprocess by the test below (a process can load only one build of the ops): every float32 output of
# the kernels for fixed inputs, from the library at argv[1], saved to argv[2].
_KERNEL_OUTPUTS_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
library = tf.load_op_library(sys.argv[1])
rng = np.random.default_rng(7)
steps, batch, units, vocab = 5, 19, 37, 11  # 19 rows: two threads' ranges and 1-5-row tails; 37 units: panel tails
def normal(*shape, scale=1.0):
    return (rng.normal(size=shape) * scale).astype("float32")
h0, c0, dh, dc = normal(batch, units, scale=0.3), normal(batch, units, scale=0.3), normal(steps, batch, units), \\
    normal(steps, batch, units)
out = {}
for cell, gates in (("gru", 3), ("lstm", 4)):
    xp, bias = normal(steps, batch, gates * units), normal(gates * units, scale=0.1)
    kernel = normal(units, gates * units, scale=units ** -0.5)
    if cell == "gru":
        h, g = library.deep_rnn_gru_sequence(xp, bias, h0, kernel, bias)
        backward = lambda kernel_grad: library.deep_rnn_gru_sequence_grad(h0, kernel, h, g, dh, kernel_grad=kernel_grad)
    else:
        h, c, g = library.deep_rnn_lstm_sequence(xp, bias, h0, c0, kernel)
        backward = lambda kernel_grad: library.deep_rnn_lstm_sequence_grad(h0, c0, kernel, h, c, g, dh, dc,
                                                                           kernel_grad=kernel_grad)
    out[f"{cell}_h"] = h.numpy()
    for kernel_grad in (False, True):
        for i, grad in enumerate(backward(kernel_grad)):
            out[f"{cell}_kernel_grad{kernel_grad}_{i}"] = grad.numpy()
ids = rng.integers(0, vocab, size=(steps * batch,)).astype("int32")
out["lookup_grad"] = library.deep_rnn_lookup_grad(ids, normal(steps * batch, 40), vocab).numpy()
for columns in (11, 28, 40):  # the loss op: under, between and over whole 16-column registers
    logits = normal(steps * batch, columns, scale=3.0)
    labels = rng.integers(0, columns, size=(steps * batch,)).astype("int32")
    loss, backprop = library.deep_rnn_softmax_cross_entropy(logits, labels)
    out[f"cross_entropy_{columns}"], out[f"cross_entropy_backprop_{columns}"] = loss.numpy(), backprop.numpy()
big = np.full((19, 40), 1e8, "float32")  # large logits: the loss must not cancel two large terms (either path)
big[:, ::3] -= 5.0
out["cross_entropy_large"] = library.deep_rnn_softmax_cross_entropy(big, np.arange(19, dtype="int32") % 40)[0].numpy()
np.savez(sys.argv[2], **out)
"""


def _kernel_outputs(library_path, output) -> dict:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _KERNEL_OUTPUTS_SCRIPT, str(library_path), str(output)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(output) as saved:
        return dict(saved)


@pytest.fixture(scope="module")
def kernel_outputs_here(tmp_path_factory):
    """_kernel_outputs of this machine's own build: the reference every other build is compared with, run once."""
    return _kernel_outputs(native.build(), tmp_path_factory.mktemp("here") / "here.npz")


OTHER_CPUS = {"sapphirerapids": "avx512f avx512_bf16 avx512_fp16 amx_tile", "cascadelake": "avx512f avx512_vnni",
              "x86-64-v3": "avx2 fma"}


@pytest.fixture(scope="module")
def other_cpu_builds(tmp_path_factory):
    """march → ((the compiler's exit code, its messages), library path): the three builds run at once, since each
    spends half a minute in TensorFlow's headers."""
    import subprocess

    folder = tmp_path_factory.mktemp("builds")
    running = {}
    for march, cpu_flags in OTHER_CPUS.items():
        output, log = folder / f"{march}.so", folder / f"{march}.log"
        with open(log, "w") as errors:  # a file, not a pipe: a long error cannot block the compiler
            running[march] = (subprocess.Popen(native.compile_command(str(output), march=march, cpu_flags=cpu_flags),
                                               stdout=subprocess.DEVNULL, stderr=errors), output, log)
    return {march: ((proc.wait(), log.read_text()), output) for march, (proc, output, log) in running.items()}


@pytest.mark.slow
@pytest.mark.parametrize("march", sorted(OTHER_CPUS))
def test_kernels_compile_for_other_cpus(march, other_cpu_builds, tmp_path, request):
    """The build must work on every CPU CI and developers get, not only this one: Intel with AMX and
    AVX512_FP16 (TensorFlow's bundled Eigen fails on FP16 unless the build turns it off), AVX-512 without
    bfloat16, and no AVX-512 at all (the Eigen products). Where this CPU can run the other build, it must also
    compute what this machine's own build computes: another CPU takes other code paths (Eigen's products instead
    of the AVX-512 microkernels), which only compiling would not test."""
    (returncode, stderr), output = other_cpu_builds[march]
    cpu_flags = OTHER_CPUS[march]
    assert returncode == 0, stderr[-2000:]
    assert output.stat().st_size > 0
    if not set(cpu_flags.split()) <= set(native.cpu_fingerprint().split()):
        return  # this CPU cannot run that build
    other = _kernel_outputs(output, tmp_path / "other.npz")
    here = request.getfixturevalue("kernel_outputs_here")  # only where a build runs here: one reference run
    assert other.keys() == here.keys()
    for name in here:  # float32 sums in another order (Eigen's products against the microkernels)
        np.testing.assert_allclose(other[name], here[name], rtol=1e-5, atol=1e-5, err_msg=name)
