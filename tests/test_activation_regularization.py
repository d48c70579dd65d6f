"""AWD-LSTM's activation regularisers (AR, TAR): the penalty's numbers, where it acts, and how it travels."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from tests.conftest import TINY_TRAIN, assert_user_error, run_cli
from trainer.config import ModelConfig, TrainConfig
from trainer.model import ActivationRegularization, build_model

FORMS = ["stacked", "layers", "fused", "native"]


def _model(form: str, ar: float, tar: float, cell: str = "lstm"):
    if form == "native":
        from trainer import native

        ok, why = native.available()
        if not ok:
            pytest.skip(f"native kernels unavailable: {why}")
    return build_model(ModelConfig(vocab_size=11, cell=cell, num_layers=2, num_hiddens=6, form=form, ar=ar, tar=tar))


def test_penalty_numbers_and_identity():
    hidden = np.array([[[1.0, -2.0], [3.0, 0.0], [3.0, 4.0]]], np.float32)  # [B=1, T=3, h=2]
    layer = ActivationRegularization(ar=2.0, tar=0.5)
    out = layer(hidden, training=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), hidden)
    ar = np.mean(hidden ** 2)                                                  # (1 + 4 + 9 + 0 + 9 + 16) / 6
    tar = np.mean(np.diff(hidden, axis=1) ** 2)                                # (4 + 4 + 0 + 16) / 4
    assert len(layer.losses) == 1
    assert float(layer.losses[0]) == pytest.approx(2.0 * ar + 0.5 * tar) == pytest.approx(2.0 * 39 / 6 + 0.5 * 6)
    one_step = ActivationRegularization(ar=2.0, tar=0.5)
    one_step(hidden[:, :1], training=True)                                     # no step to compare: TAR is 0
    assert float(one_step.losses[0]) == pytest.approx(2.0 * 5 / 2)
    quiet = ActivationRegularization(ar=2.0, tar=0.5)
    quiet(hidden, training=False)
    assert quiet.losses == []
    again = ActivationRegularization.from_config(layer.get_config())
    assert (again.ar, again.tar) == (2.0, 0.5)


@pytest.mark.parametrize("form", FORMS)
def test_training_loss_is_cross_entropy_plus_the_penalty_in_every_form(form):
    """With a zero learning rate, fit's loss minus the inference loss is exactly ar·mean(h²) + tar·mean(Δh²)
    of the top layer's outputs; the regularisers add no weights."""
    ids = np.random.default_rng(0).integers(0, 11, (4, 9)).astype("int32")
    model = _model(form, ar=2.0, tar=1.0)
    plain = _model(form, ar=0.0, tar=0.0)
    assert len(model.weights) == len(plain.weights)
    plain.set_weights(model.get_weights())
    for m in (model, plain):
        m.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hidden = keras.ops.convert_to_numpy(
        keras.Model(model.inputs, model.get_layer("activation_regularization").output)([ids]))
    penalty = 2.0 * np.mean(hidden ** 2) + 1.0 * np.mean(np.diff(hidden, axis=1) ** 2)
    trained = model.train_on_batch(ids, ids)
    assert plain.train_on_batch(ids, ids) == pytest.approx(model.evaluate(ids, ids, verbose=0), rel=1e-5)
    assert trained - model.evaluate(ids, ids, verbose=0) == pytest.approx(penalty, rel=1e-3)


def test_weights_move_between_models_with_and_without_the_regularisers(tmp_path):
    """Not part of the architecture: a checkpoint loads whatever ar and tar the model has, and the saved
    model keeps them."""
    with_reg = _model("fused", ar=2.0, tar=1.0)
    path = str(tmp_path / "w.weights.h5")
    with_reg.save_weights(path)
    without = _model("fused", ar=0.0, tar=0.0)
    without.load_weights(path)
    ids = np.ones((2, 5), np.int32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(without(ids)), keras.ops.convert_to_numpy(with_reg(ids)),
                               rtol=1e-6, atol=1e-6)
    with_reg.save(tmp_path / "m.keras")
    layer = keras.saving.load_model(tmp_path / "m.keras").get_layer("activation_regularization")
    assert (layer.ar, layer.tar) == (2.0, 1.0)
    assert ModelConfig(vocab_size=11, ar=2.0).architecture() == ModelConfig(vocab_size=11).architecture()


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError, match="ar must be a finite number >= 0"):
        ModelConfig(vocab_size=11, ar=bad)
    with pytest.raises(ValueError, match="tar must be a finite number >= 0"):
        TrainConfig.from_flat(tar=bad)


def test_cli_refuses_a_negative_ar_in_one_line(tiny_data, tmp_path):
    proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "m"), "--ar", "-1")
    assert_user_error(proc, "ar must be a finite number >= 0")
    assert not (tmp_path / "m").exists()


def test_tuner_hands_the_regularisers_to_trainer_train():
    from trainer.search import shared_settings

    assert shared_settings(TrainConfig.from_flat(stateful=True, ar=2.0, tar=1.0)) == {"stateful": True, "ar": 2.0,
                                                                                      "tar": 1.0}
    assert shared_settings(TrainConfig()) == {}


@pytest.mark.slow
def test_stateful_training_with_ar_and_tar_learns_and_exports(tiny_data, tmp_path):
    from trainer.training import train_and_evaluate

    cfg = TrainConfig.from_flat(**{**TINY_TRAIN, "epochs": 2}, optimizer="adam", lr=0.01, stateful=True, ar=2.0,
                                tar=1.0)
    metrics = train_and_evaluate(cfg, str(tiny_data), str(tmp_path / "m"))
    assert metrics["best_val_stream_ppl"] < 20
    saved = json.loads((tmp_path / "m" / "run_config.json").read_text())
    assert saved["train"]["ar"] == 2.0 and saved["train"]["tar"] == 1.0
