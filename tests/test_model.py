"""Cells and model forms, tested the way Keras tests its own layers."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.cells import ScratchRNNCell
from trainer.config import ModelConfig
from trainer.model import FusedRNNStack, build_model, graph_op_types, model_cells, model_form, resolve_form


def test_scratch_cell_contract_shapes_and_weights():
    cell = ScratchRNNCell(5)
    layer = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    out, state = layer(np.zeros((3, 4, 2), "float32"))
    assert out.shape == (3, 4, 5) and state.shape == (3, 5)
    assert cell.state_size == 5 and len(cell.weights) == 3
    assert [tuple(w.shape) for w in cell.weights] == [(2, 5), (5, 5), (5,)]


def test_scratch_cell_numbers_with_constant_initialisers():
    cell = ScratchRNNCell(3)
    layer = keras.layers.RNN(cell, return_sequences=True)
    layer.build((1, 2, 2))
    cell.kernel.assign(np.full((2, 3), 0.1, "float32"))
    cell.recurrent_kernel.assign(np.full((3, 3), 0.2, "float32"))
    out = np.asarray(layer(np.array([[[1.0, 2.0], [1.0, 2.0]]], "float32")))
    np.testing.assert_allclose(out[0, 0], [0.2913126124515909] * 3, rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], [0.4420594524023811] * 3, rtol=1e-6)


def test_scratch_cell_serialisation_round_trip():
    cell = ScratchRNNCell(7, activation="relu", sigma=0.05)
    clone = ScratchRNNCell.from_config(cell.get_config())
    assert clone.get_config() == cell.get_config()
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.RNN(cell)])
    restored = keras.models.model_from_json(model.to_json())
    assert isinstance(restored.layers[0].cell, ScratchRNNCell)


def test_scratch_stack_equals_simple_rnn_stack():
    x = np.random.default_rng(0).normal(size=(4, 6, 3)).astype("float32")
    scratch = keras.layers.RNN(keras.layers.StackedRNNCells([ScratchRNNCell(8), ScratchRNNCell(8)]),
                               return_sequences=True)
    simple = keras.layers.RNN(keras.layers.StackedRNNCells(
        [keras.layers.SimpleRNNCell(8), keras.layers.SimpleRNNCell(8)]), return_sequences=True)
    scratch.build(x.shape)
    simple.build(x.shape)
    simple.set_weights(scratch.get_weights())
    np.testing.assert_allclose(np.asarray(scratch(x)), np.asarray(simple(x)), atol=1e-6)


def test_scratch_cell_trains_one_step():
    model = build_model(ModelConfig(vocab_size=5, cell="scratch", num_layers=2, num_hiddens=4, form="stacked"))
    model.compile(optimizer=keras.optimizers.SGD(1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.copy() for w in model.get_weights()]
    ids = np.random.default_rng(0).integers(0, 5, (8, 6)).astype("int32")
    model.train_on_batch(ids, ids)
    assert all(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn", "scratch"])
def test_all_forms_compute_the_same_function(cell):
    ids = np.random.default_rng(1).integers(0, 11, (3, 9)).astype("int32")
    forms = ["stacked", "fused"] + ([] if cell == "scratch" else ["layers"])
    models = {f: build_model(ModelConfig(vocab_size=11, cell=cell, num_layers=3, num_hiddens=6, form=f)) for f in forms}
    weights = models["stacked"].get_weights()
    for form, model in models.items():
        model.set_weights(weights)
        assert len(model_cells(model)) == 3 and model_form(model) == form
    reference = np.asarray(models["stacked"](ids))
    for form, model in models.items():
        np.testing.assert_allclose(np.asarray(model(ids)), reference, atol=2e-6, err_msg=form)
        # the traced (static length, unrolled) path equals the eager one
        traced = tf.function(lambda x, m=model: m(x))(tf.constant(ids))
        np.testing.assert_allclose(np.asarray(traced), reference, atol=2e-6, err_msg=form)


def test_dropout_acts_on_the_top_layers_outputs_at_every_depth():
    """Dropout is on every non-recurrent connection, the outputs into the logits included, so a one-layer
    model is regularised too; it is inert at inference and adds no weights."""
    ids = np.random.default_rng(3).integers(0, 11, (4, 7)).astype("int32")
    for layers in (1, 2):
        for form in ("stacked", "layers", "fused"):
            model = build_model(ModelConfig(vocab_size=11, num_layers=layers, num_hiddens=8, dropout=0.5, form=form))
            plain = build_model(ModelConfig(vocab_size=11, num_layers=layers, num_hiddens=8, form=form))
            assert model.count_params() == plain.count_params()
            plain.set_weights(model.get_weights())
            np.testing.assert_allclose(np.asarray(model(ids)), np.asarray(plain(ids)), atol=1e-6)
            dropped = np.asarray(model(ids, training=True))
            assert not np.allclose(dropped, np.asarray(model(ids)), atol=1e-3), (layers, form)


def test_weight_count_matches_the_book():
    # GRU layer: 3 gates × (d·h + h·h + 2h) with Keras's reset_after double bias; output h·V + V
    model = build_model(ModelConfig(vocab_size=28, cell="gru", num_layers=2, num_hiddens=32, form="fused"))
    expected = 3 * (28 * 32 + 32 * 32 + 2 * 32) + 3 * (32 * 32 + 32 * 32 + 2 * 32) + 32 * 28 + 28
    assert model.count_params() == expected


def test_fast_path_is_chosen_and_used():
    """auto gives the cuDNN layers on a GPU (nothing measured there yet); on a CPU what bench.forms measured
    (tests/test_native.py checks that choice really runs). The fused stack's time loop is unrolled."""
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    if on_gpu:
        form = resolve_form("auto", "gru")
        assert form == "layers" and model_form(build_model(ModelConfig(vocab_size=28, form=form))) == "layers"
    model = build_model(ModelConfig(vocab_size=28, form="fused"))
    assert any(isinstance(x, FusedRNNStack) for x in model.layers)
    # the training graph must hold no while loop (the time loop is unrolled)
    ops = graph_op_types(model, steps=32)
    assert "While" not in ops and "StatelessWhile" not in ops


@pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="needs a GPU: cuDNN dispatch")
def test_layers_form_reaches_cudnn_on_gpu():
    model = build_model(ModelConfig(vocab_size=28, form="layers", num_hiddens=64))
    types = graph_op_types(model, steps=32)
    assert any("CudnnRNN" in t for t in types), sorted(types)


def test_invalid_configs_are_refused():
    for bad in (dict(num_layers=0), dict(num_hiddens=0), dict(cell="transformer"), dict(dropout=1.5)):
        with pytest.raises(ValueError):
            ModelConfig(vocab_size=28, **bad)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_form_has_the_same_gradients(cell):
    """The fused stack's hand-shaped graph (custom gather gradient, unrolled loop) trains identically."""
    rng = np.random.default_rng(2)
    ids = tf.constant(rng.integers(0, 11, (5, 7)).astype("int32"))
    targets = tf.constant(rng.integers(0, 11, (5, 7)).astype("int32"))
    stacked = build_model(ModelConfig(vocab_size=11, cell=cell, num_layers=2, num_hiddens=6, form="stacked"))
    fused = build_model(ModelConfig(vocab_size=11, cell=cell, num_layers=2, num_hiddens=6, form="fused"))
    fused.set_weights(stacked.get_weights())
    grads = []
    for model in (stacked, fused):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, model(ids, training=True)))
        grads.append([tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, model.trainable_variables)])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=1e-6)
