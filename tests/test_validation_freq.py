"""--validation-freq: which epochs validate (windows and streams), and what reads the validation figures."""
from __future__ import annotations

import csv
import json
import warnings

import pytest

from tests.conftest import TINY_TRAIN
from trainer.config import TrainConfig
from trainer.training import train_and_evaluate


def _validated_epochs(model_dir, key="val_perplexity") -> list[int]:
    with open(model_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [int(r["epoch"]) + 1 for r in rows if r.get(key) not in (None, "", "NA")]


def _epochs(model_dir) -> int:
    with open(model_dir / "history.csv", newline="") as f:
        return len(list(csv.DictReader(f)))


def test_validation_freq_validates_every_nth_the_first_and_the_last_epoch_also_on_resume(tiny_data, tmp_path):
    """Every 4th epoch plus each run's first and the last: windows and streams alike; the best checkpoint is a
    validated epoch; epochs that did not validate neither warn nor write a checkpoint."""
    cfg = TrainConfig.from_flat(**{**TINY_TRAIN, "batch_size": 32, "epochs": 5}, steps_per_epoch=2, stateful=True,
                                ema=0.99,
                      validation_freq=4)
    model_dir = tmp_path / "m"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = train_and_evaluate(cfg, str(tiny_data), str(model_dir))
    assert not [w for w in caught if "available" in str(w.message)], [str(w.message) for w in caught]
    assert _epochs(model_dir) == 5
    assert _validated_epochs(model_dir) == [1, 4, 5]
    assert _validated_epochs(model_dir, "val_stream_perplexity") == [1, 4, 5]
    assert metrics["best_epoch"] in (1, 4, 5) and metrics["hparams"]["validation_freq"] == 4
    with open(model_dir / "checkpoints" / "best.json") as f:
        assert json.load(f)["epoch"] + 1 in (1, 4, 5)
    breakdown = metrics["time_breakdown"]
    assert breakdown["window_validation_s"] > 0 and breakdown["stream_validation_s"] > 0

    # resumed to 11 epochs: the resumed run's first epoch (6), then 8, then the last (11)
    metrics = train_and_evaluate(cfg.replace(epochs=11), str(tiny_data), str(model_dir))
    assert _epochs(model_dir) == 11 and metrics["epochs"] == 11
    assert _validated_epochs(model_dir) == [1, 4, 5, 6, 8, 11]
    assert _validated_epochs(model_dir, "val_stream_perplexity") == [1, 4, 5, 6, 8, 11]
    assert metrics["val_ppl"] > 1 and metrics["val_stream_ppl"] > 1


def test_an_epoch_a_deadline_ends_is_validated(tiny_data, tmp_path):
    """A time limit stops training within an epoch that --validation-freq would skip: it still validates,
    so the run's last row (what metrics.json reports) has its validation figures."""
    cfg = TrainConfig.from_flat(**{**TINY_TRAIN, "batch_size": 32, "epochs": 100000}, steps_per_epoch=2,
                      validation_freq=100000, time_limit_min=0.05)
    model_dir = tmp_path / "m"
    metrics = train_and_evaluate(cfg, str(tiny_data), str(model_dir))
    epochs = _epochs(model_dir)
    assert epochs > 2  # so that the last epoch is neither the first nor a multiple of the frequency
    assert _validated_epochs(model_dir) == [1, epochs]
    assert metrics["best_epoch"] in (1, epochs)


def test_lr_patience_counts_validations():
    """ReduceLROnPlateau under --validation-freq: epochs without the figure neither wait nor warn."""
    import keras

    from trainer.callbacks import ValidatedReduceLROnPlateau

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    reduce = ValidatedReduceLROnPlateau(monitor="val_perplexity", mode="min", factor=0.5, patience=2, verbose=0)
    reduce.set_model(model)
    reduce.on_train_begin()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for epoch, logs in enumerate([{"val_perplexity": 5.0}, {}, {}, {"val_perplexity": 5.0}, {}, {},
                                      {"val_perplexity": 5.0}]):
            reduce.on_epoch_end(epoch, dict(logs))
            rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
            assert rate == (0.5 if epoch == 6 else 1.0), (epoch, rate)  # the third validation without a gain


def test_curves_join_the_validated_epochs():
    from trainer.plots import logged_series

    history = [{"epoch": 0.0, "perplexity": 9.0, "val_perplexity": 8.0}, {"epoch": 1.0, "perplexity": 7.0},
               {"epoch": 2.0, "perplexity": 6.0, "val_perplexity": 5.0}]
    assert logged_series(history, "val_perplexity") == ([1, 3], [8.0, 5.0])
    assert logged_series(history, "perplexity") == ([1, 2, 3], [9.0, 7.0, 6.0])
    assert logged_series(history, "val_stream_perplexity") == ([], [])


def test_schedule_asks_the_model_whether_training_stops():
    from trainer.callbacks import ValidationSchedule

    class Model:
        stop_training = False

    schedule = ValidationSchedule(every=3, last_epoch=10)
    schedule.set_model(Model())
    schedule.on_epoch_begin(1)  # a resumed run starting at epoch 2 (1-based)
    assert [e for e in range(1, 12) if e in schedule.epochs] == [2, 3, 6, 9, 10, 11]
    schedule.model.stop_training = True
    assert 7 in schedule.epochs
    schedule.on_train_end()
    schedule.model.stop_training = False
    schedule.on_epoch_begin(6)
    assert 7 in schedule.epochs and 8 not in schedule.epochs
    with pytest.raises(ValueError, match="validation_freq"):
        TrainConfig.from_flat(validation_freq=0)
