"""Weight drop (DropConnect on the recurrent kernels, AWD-LSTM): what it masks, when, and where it runs."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import TINY_TRAIN, assert_user_error, run_cli
from trainer.config import ModelConfig
from trainer.model import build_model, resolve_form

FORMS = ["fused", "native"]


def _model(cell: str, form: str, weight_drop: float, layers: int = 2, hiddens: int = 6):
    if form == "native":
        from trainer import native

        ok, why = native.available()
        if not ok:
            pytest.skip(f"native kernels unavailable: {why}")
    return build_model(ModelConfig(vocab_size=11, cell=cell, num_layers=layers, num_hiddens=hiddens, form=form,
                                   weight_drop=weight_drop))


def _recurrent_kernels(model):
    return [v for v in model.trainable_variables if "recurrent_kernel" in v.path]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_weight_drop_masks_only_the_recurrent_kernels_and_only_in_training(cell, form):
    """Dropping (almost) every recurrent weight leaves exactly the network whose recurrent kernels are zero;
    at inference the model is the plain one."""
    ids = np.random.default_rng(0).integers(0, 11, (3, 7)).astype("int32")
    dropped = _model(cell, form, weight_drop=1 - 1e-7)
    plain = _model(cell, form, weight_drop=0.0)
    plain.set_weights(dropped.get_weights())
    np.testing.assert_allclose(np.asarray(dropped(ids)), np.asarray(plain(ids)), atol=1e-6)
    for kernel in _recurrent_kernels(plain):
        kernel.assign(tf.zeros_like(kernel))
    np.testing.assert_allclose(np.asarray(dropped(ids, training=True)), np.asarray(plain(ids)), atol=1e-5)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_one_mask_per_batch_shared_by_every_row_and_step(cell, form):
    """With p = 0.5 about half the recurrent weights get no gradient at all from a whole batch (a weight
    dropped for some rows or steps only would still get one); the input kernels keep dense gradients."""
    keras.utils.set_random_seed(5)
    model = _model(cell, form, weight_drop=0.5, hiddens=16)
    rng = np.random.default_rng(1)
    ids, targets = (tf.constant(rng.integers(0, 11, (8, 12)).astype("int32")) for _ in range(2))
    with tf.GradientTape() as tape:
        logits = model(ids, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits))
    grads = dict(zip((v.path for v in model.trainable_variables),
                     (tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, model.trainable_variables))))
    recurrent = [g for path, g in grads.items() if "recurrent_kernel" in path]
    assert len(recurrent) == 2
    for grad in recurrent:
        assert 0.35 < np.mean(grad == 0) < 0.65, np.mean(grad == 0)
    second_layer_kernel = next(g for path, g in grads.items() if path.endswith("cell_1/kernel"))
    assert np.mean(second_layer_kernel == 0) < 0.05
    # a new batch draws a new mask
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, model(ids, training=True)))
    again = tf.convert_to_tensor(tape.gradient(loss, _recurrent_kernels(model)[0])).numpy()
    assert not np.array_equal(again == 0, recurrent[0] == 0)


def test_forms_without_their_own_recurrence_refuse_weight_drop_and_auto_avoids_them(monkeypatch):
    for form in ("stacked", "layers"):
        with pytest.raises(ValueError, match="weight drop"):
            ModelConfig(vocab_size=11, form=form, weight_drop=0.2)
    with pytest.raises(ValueError, match="weight_drop"):
        ModelConfig(vocab_size=11, weight_drop=1.0)
    # whatever bench.forms measured fastest, auto with weight drop gives a form that applies it
    for measured in ("stacked", "layers"):
        monkeypatch.setattr("trainer.model.measured_form", lambda *a, m=measured, **k: m)
        assert resolve_form("auto", "gru", 32) == measured
        with pytest.warns(UserWarning, match=f"the '{measured}' form is fastest here, but weight drop"):
            assert resolve_form("auto", "gru", 32, weight_drop=0.3) == "fused"


def test_weight_drop_serialises_with_the_model(tmp_path):
    model = _model("gru", "fused", weight_drop=0.25)
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.get_layer("rnn").weight_drop == 0.25


@pytest.mark.slow
def test_training_with_weight_drop_refuses_a_form_that_cannot_and_trains_and_exports(tiny_data, tmp_path):
    """The CLI refuses --weight-drop with the stacked form in one line; auto trains with it (stateful too),
    records it, and the model exports with standard ops."""
    from serving.savedmodel import check_portable, export_model
    from trainer.config import TrainConfig
    from trainer.training import train_and_evaluate

    proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "bad"),
                   "--weight-drop", "0.3", "--backend-form", "stacked", "--epochs", "1")
    assert_user_error(proc, "weight drop", "stacked")
    proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "bad"),
                   "--weight-drop", "1.5", "--epochs", "1")
    assert_user_error(proc, "weight_drop must be in [0, 1)")
    assert not (tmp_path / "bad").exists()  # refused before anything is written
    cfg = TrainConfig.from_flat(**{**TINY_TRAIN, "batch_size": 32}, weight_drop=0.3, dropout=0.1, stateful=True,
                      optimizer="adam", lr=0.01)
    metrics = train_and_evaluate(cfg, str(tiny_data), str(tmp_path / "m"))
    assert metrics["form"] in ("fused", "native") and metrics["hparams"]["weight_drop"] == 0.3
    assert metrics["best_val_stream_ppl"] < 20
    check_portable(export_model(str(tmp_path / "m"), str(tmp_path / "export")))
