"""Input dropout (whole characters dropped per sequence, AWD-LSTM's embedding dropout): what it drops, when,
and that every form drops the same thing."""
from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import TINY_TRAIN, assert_user_error, run_cli
from trainer.config import ModelConfig, TrainConfig
from trainer.model import build_model, model_cells

FORMS = ["stacked", "layers", "fused", "native"]


def _model(cell: str, form: str, input_dropout: float, layers: int = 1, vocab: int = 11):
    if form == "native":
        from trainer import native

        ok, why = native.available()
        if not ok:
            pytest.skip(f"native kernels unavailable: {why}")
    return build_model(ModelConfig(vocab_size=vocab, cell=cell, num_layers=layers, num_hiddens=5, form=form,
                                   input_dropout=input_dropout))


def _logits_for_inputs(model, inputs):
    """The one-layer model's logits for arbitrary input vectors [B, T, V] in place of one-hot ones."""
    hidden = keras.layers.RNN(model_cells(model)[0], return_sequences=True)(inputs)
    return np.asarray(model.get_layer("logits")(hidden))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_dropping_every_character_leaves_the_network_without_input_and_inference_is_plain(cell, form):
    """p ≈ 1 in training is the network fed zero vectors (its input biases still act, so not a zero output);
    at inference the model is the one without input dropout."""
    ids = np.random.default_rng(0).integers(0, 11, (3, 7)).astype("int32")
    dropped = _model(cell, form, input_dropout=1 - 1e-7, layers=2)
    plain = _model(cell, form, input_dropout=0.0, layers=2)
    plain.set_weights(dropped.get_weights())
    np.testing.assert_allclose(np.asarray(dropped(ids)), np.asarray(plain(ids)), atol=1e-6)
    first_kernel = model_cells(plain)[0].kernel
    first_kernel.assign(np.zeros(first_kernel.shape, "float32"))
    np.testing.assert_allclose(np.asarray(dropped(ids, training=True)), np.asarray(plain(ids)), atol=1e-5)
    assert not np.allclose(np.asarray(dropped(ids)), np.asarray(plain(ids)), atol=1e-3)


@pytest.mark.parametrize("form", FORMS + ["fused-unknown-length"])
def test_a_character_type_is_dropped_or_kept_in_a_whole_row(form):
    """Each row in training is the model on one-hot inputs times one mask per character type (0 or 1 / keep,
    the same at every step): of the 2^V masks exactly one reproduces the row. Rows draw their own masks.
    (fused-unknown-length: the fused stack's tf.scan path, for sequences of unknown length.)"""
    keras.utils.set_random_seed(3)
    vocab, rows, steps = 3, 24, 9
    model = _model("gru", form.split("-")[0], input_dropout=0.5, vocab=vocab)
    ids = np.random.default_rng(1).integers(0, vocab, (rows, steps)).astype("int32")
    one_hot = np.eye(vocab, dtype="float32")[ids]                                  # [B, T, V]
    masks = np.array(list(itertools.product([0.0, 2.0], repeat=vocab)), "float32")  # [2^V, V]
    candidates = np.stack([_logits_for_inputs(model, one_hot * m) for m in masks])  # [2^V, B, T, V]
    if form == "fused-unknown-length":
        run = tf.function(lambda x: model(x, training=True), input_signature=[tf.TensorSpec([None, None], tf.int32)])
        trained = np.asarray(run(ids))
    else:
        trained = np.asarray(model(ids, training=True))
    chosen = []
    for row in range(rows):
        matches = [k for k in range(len(masks)) if np.allclose(candidates[k, row], trained[row], atol=1e-5)]
        present = np.unique(ids[row])  # masks differing only on absent types give the same row
        assert len({tuple(masks[k][present]) for k in matches}) == 1, (row, matches)
        chosen.append(tuple(masks[matches[0]][present]))
    kept = np.mean([v > 0 for mask in chosen for v in mask])
    assert 0.25 < kept < 0.75, kept
    assert len(set(chosen)) > 2


def test_input_dropout_is_checked_kept_out_of_the_architecture_and_serialised(tmp_path):
    for make in (lambda: ModelConfig(vocab_size=11, input_dropout=1.0),
                 lambda: TrainConfig.from_flat(input_dropout=-0.1)):
        with pytest.raises(ValueError, match=r"input_dropout must be in \[0, 1\)"):
            make()
    from trainer.search import shared_settings

    # best_hparams.json keeps it
    assert shared_settings(TrainConfig.from_flat(input_dropout=0.1)) == {"input_dropout": 0.1}
    # a run may resume with another input dropout: it changes training, not the weights' layout
    assert "input_dropout" not in ModelConfig(vocab_size=11, input_dropout=0.2).architecture()
    for form in ("fused", "stacked"):
        model = _model("gru", form, input_dropout=0.25)
        model.save(str(tmp_path / f"{form}.keras"))
        restored = keras.models.load_model(str(tmp_path / f"{form}.keras"))
        layer = restored.get_layer("rnn" if form == "fused" else "input_dropout")
        assert getattr(layer, "input_dropout", getattr(layer, "rate", None)) == 0.25


@pytest.mark.slow
def test_training_with_input_dropout_from_the_cli_and_stateful(tiny_data, tmp_path):
    """The CLI refuses a bad --input-dropout in one line before writing anything; a stateful run with it
    trains, records it and exports with standard ops."""
    from serving.savedmodel import check_portable, export_model
    from trainer.training import train_and_evaluate

    proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "bad"),
                   "--input-dropout", "1.5", "--epochs", "1")
    assert_user_error(proc, "input_dropout must be in [0, 1)")
    assert not (tmp_path / "bad").exists()
    cfg = TrainConfig.from_flat(**{**TINY_TRAIN, "batch_size": 32}, input_dropout=0.2, stateful=True, optimizer="adam",
                      lr=0.01)
    metrics = train_and_evaluate(cfg, str(tiny_data), str(tmp_path / "m"))
    assert metrics["hparams"]["input_dropout"] == 0.2
    assert metrics["best_val_stream_ppl"] < 20
    check_portable(export_model(str(tmp_path / "m"), str(tmp_path / "export")))
