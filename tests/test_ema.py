"""Weight averaging (--ema): validation, the best checkpoint and the export read the moving average of the
weights; training, the backup and the latest checkpoint keep the trained weights."""
from __future__ import annotations

import csv

import keras
import numpy as np
import pytest

from tests.conftest import TINY_TRAIN, assert_user_error, run_cli
from trainer import callbacks as cb
from trainer.config import ModelConfig, TrainConfig
from trainer.training import build_training_model, compile_model, train_and_evaluate


class WeightsAtEpochEnd(keras.callbacks.Callback):
    """Records the model's kernel after every step and at epoch end (what the callbacks after it see)."""

    def __init__(self):
        super().__init__()
        self.steps, self.epoch_ends, self.val_losses = [], [], []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(self.model.layers[-1].kernel.numpy().copy())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(self.model.layers[-1].kernel.numpy().copy())
        self.val_losses.append(logs["val_loss"])


def test_averaged_weights_warm_up_then_keep_their_momentum_between_the_two_callbacks_and_validation_reads_them():
    """A 1-unit linear model, the trainer's SGD with averaging at momentum 0.25, 2 epochs of 3 steps: the
    callbacks between AveragedWeights and TrainedWeights see avg_0 = w_0, avg_k = m_k avg_(k-1) + (1 - m_k) w_k
    with m_k = min(0.25, (1 + k) / (10 + k)) (warm-up, then the momentum), hand-computed from the recorded
    steps; val_loss is the loss of that average; after TrainedWeights, and in the next epoch's steps, the
    trained weights are back, and fit() leaves them in the model."""
    from trainer.optimizers import make_optimizer

    keras.utils.set_random_seed(0)
    x = np.arange(12, dtype="float32").reshape(12, 1) / 12
    y = 3 * x
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(optimizer=make_optimizer("sgd", 0.5, clip_norm=0.0, ema=0.25), loss="mse")
    between, after = WeightsAtEpochEnd(), WeightsAtEpochEnd()
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, validation_data=(x, y), verbose=0,
              callbacks=[cb.AveragedWeights(), between, cb.TrainedWeights(), after])

    trained = [float(w[0, 0]) for w in after.steps]  # six steps, the trained weights
    assert len(trained) == 6 and len(set(trained)) == 6
    average = []
    for k, w in enumerate(trained):
        momentum = 0.0 if k == 0 else min(0.25, (1 + k) / (10 + k))  # 0, 2/11, then 0.25 from k = 2 on
        average.append(w if k == 0 else momentum * average[-1] + (1 - momentum) * w)
    assert [float(w[0, 0]) for w in between.epoch_ends] == pytest.approx([average[2], average[5]], rel=1e-6)
    assert [float(w[0, 0]) for w in after.epoch_ends] == pytest.approx([trained[2], trained[5]], rel=1e-6)
    assert between.steps == after.steps  # the second epoch trained from the trained weights, not the average
    for epoch, k in ((0, 2), (1, 5)):
        assert between.val_losses[epoch] == pytest.approx(float(np.mean((x * average[k] - y) ** 2)), rel=1e-5)
    assert float(model.layers[-1].kernel.numpy()[0, 0]) == pytest.approx(trained[5], rel=1e-6)


@pytest.mark.parametrize("stateful", [False, True])
def test_training_with_ema_validates_checkpoints_and_exports_the_average(tiny_data, tmp_path, stateful):
    """The real train_and_evaluate with --ema 0.9: training is the same as without (same train perplexity),
    the logged validation is the average's (the saved model, which is the best epoch's average, scores
    exactly the logged best val perplexity), and the latest checkpoint, written as fit() ends, holds the
    trained weights: the same as the run without averaging."""
    from serving.savedmodel import load_trained
    from trainer.data import load_data_info, make_dataset

    settings = {**TINY_TRAIN, "epochs": 2, "optimizer": "adam", "lr": 0.02, "stateful": stateful}
    plain = train_and_evaluate(TrainConfig.from_flat(**settings), str(tiny_data), str(tmp_path / "plain"))
    averaged = train_and_evaluate(TrainConfig.from_flat(**settings, ema=0.9), str(tiny_data), str(tmp_path / "ema"))
    assert averaged["hparams"]["ema"] == 0.9
    assert averaged["train_ppl"] == pytest.approx(plain["train_ppl"], rel=1e-5)  # same training
    assert averaged["val_ppl"] != pytest.approx(plain["val_ppl"], rel=1e-4)  # validated on other weights

    model, _, run_config = load_trained(str(tmp_path / "ema"))
    info = load_data_info(str(tiny_data))
    valid = make_dataset(info.valid_files, info.num_steps, 256, shuffle=False, num_windows=info.num_valid)
    compile_model(model, TrainConfig())
    saved_ppl = model.evaluate(valid, verbose=0, return_dict=True)["perplexity"]
    assert saved_ppl == pytest.approx(averaged["best_val_ppl"], rel=1e-4)

    def latest_weights(run):  # the training model's checkpoint (a CarriedStateModel under --stateful)
        cfg = TrainConfig.from_flat(**settings, ema=0.9 if run == "ema" else 0.0)
        training = build_training_model(cfg, ModelConfig(**run_config["model"]), 1)
        training.optimizer.build(training.trainable_variables)  # the checkpoint holds its variables too
        training.load_weights(tmp_path / run / "checkpoints" / "last.weights.h5")
        return (training.core if stateful else training).get_weights()

    for trained, reference in zip(latest_weights("ema"), latest_weights("plain")):  # written as fit() ends
        np.testing.assert_allclose(trained, reference, rtol=1e-4, atol=1e-5)
    assert not all(np.allclose(a, b, atol=1e-5) for a, b in zip(latest_weights("ema"), model.get_weights()))
    history = list(csv.DictReader(open(tmp_path / "ema" / "history.csv")))
    assert len(history) == 2


def test_ema_flag_is_checked_and_carried_by_the_tuner(tiny_data, tmp_path):
    """--ema outside [0, 1) exits 2 in one line; trainer.tune --ema writes it to best_hparams.json."""
    from trainer.search import shared_settings

    assert_user_error(run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "m"),
                              "--ema", "1"), "ema must be in [0, 1)")
    assert shared_settings(TrainConfig.from_flat(ema=0.99))["ema"] == 0.99
    assert "ema" not in shared_settings(TrainConfig())
