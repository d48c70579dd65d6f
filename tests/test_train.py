"""The training stage: smoke run of the real train_and_evaluate, resume, refusals, generation."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from common.cli import UserError
from tests.conftest import ROOT, TINY_TRAIN, assert_user_error, run_cli
from trainer.config import TrainConfig
from trainer.training import train_and_evaluate


def test_smoke_run_writes_every_artefact(trained):
    model_dir, metrics = trained
    for name in ("model.keras", "metrics.json", "history.csv", "curves.png", "vocab.txt", "run_config.json",
                 "checkpoints/best.weights.h5", "checkpoints/last.weights.h5"):
        assert (model_dir / name).exists(), name
    assert os.listdir(model_dir / "logs")
    on_disk = json.loads((model_dir / "metrics.json").read_text())
    for key in ("train_ppl", "val_ppl", "epochs", "train_tokens_per_s", "wall_s", "hparams", "sample",
                "train_bpc", "val_bpc"):
        assert key in on_disk, key
    assert on_disk["epochs"] == 2 and on_disk["hparams"]["num_hiddens"] == 16
    assert 1.0 < on_disk["val_ppl"] < 28.0 and on_disk["train_tokens_per_s"] > 0
    assert on_disk["sample"].startswith("it has") and len(on_disk["sample"]) == len("it has") + 10
    np.testing.assert_allclose(on_disk["val_bpc"], np.log2(on_disk["val_ppl"]), rtol=1e-4)


def test_time_breakdown_accounts_for_the_whole_run(trained):
    """metrics.json says where the wall time went; the parts add up to wall_s and each is measured."""
    model_dir, _ = trained
    on_disk = json.loads((model_dir / "metrics.json").read_text())
    parts = on_disk["time_breakdown"]
    assert set(parts) == {"load_tensorflow_s", "setup_s", "graph_build_s", "train_steps_s", "window_validation_s",
                          "stream_validation_s", "epoch_bookkeeping_s", "finish_s"}
    assert all(v >= 0 for v in parts.values())
    assert sum(parts.values()) == pytest.approx(on_disk["wall_s"], rel=0.02)
    for key in ("setup_s", "train_steps_s", "window_validation_s", "stream_validation_s", "finish_s"):
        assert parts[key] > 0, key
    with open(model_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["valid_seconds"]) > 0 and float(r["stream_seconds"]) > 0 for r in rows)
    assert parts["window_validation_s"] == pytest.approx(sum(float(r["valid_seconds"]) for r in rows))


@pytest.mark.parametrize("stateful", [False, True])
def test_input_pipelines_run_without_tf_data_autotuning(tiny_data, stateful):
    """The trainer's pipelines turn tf.data's autotuner off (trainer.data.pipeline_options: on 2 cores its
    background tuning slowed the book's whole run by ~17 %) and shard batches across workers; a pipeline that
    silently lost the options would run at the slower rate."""
    import tensorflow as tf

    from trainer.data import load_data_info
    from trainer.training import fit_data

    info = load_data_info(str(tiny_data))
    train_ds, valid_ds, _, _ = fit_data(TrainConfig.from_flat(**{**TINY_TRAIN, "stateful": stateful}), info)
    for ds in (train_ds, valid_ds):
        options = ds.options()
        assert options.autotune.enabled is False
        assert options.experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
        ids, targets = next(iter(ds))
        assert targets.shape[0] == TINY_TRAIN["batch_size"]


def test_perplexity_is_a_streaming_token_metric(trained, tiny_data):
    """val perplexity equals exp(mean token loss) over the whole validation set, recomputed here."""
    import keras
    import tensorflow as tf

    from trainer.data import load_data_info, make_dataset
    from trainer.metrics import perplexity_by_position

    model_dir, _ = trained
    model = keras.models.load_model(model_dir / "model.keras")
    info = load_data_info(str(tiny_data))
    total, count = 0.0, 0
    for x, y in make_dataset(info.valid_files, info.num_steps, 300, shuffle=False):
        ce = tf.keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True)
        total, count = total + float(tf.reduce_sum(ce)), count + int(tf.size(ce))
    history = list(csv.DictReader(open(model_dir / "history.csv")))
    best = min(float(r["val_perplexity"]) for r in history)
    np.testing.assert_allclose(np.exp(total / count), best, rtol=1e-4)
    by_position = perplexity_by_position(model, make_dataset(info.valid_files, info.num_steps, 300, shuffle=False))
    assert len(by_position) == info.num_steps
    np.testing.assert_allclose(np.exp(np.mean(np.log(by_position))), best, rtol=1e-4)
    assert by_position[0] > by_position[-1]  # one character of context predicts worse than fifteen


def test_greedy_text_equals_the_keras_model(trained):
    """The graph's generation loop vs. repeatedly running the whole Keras model (the book's predict)."""
    import keras
    import tensorflow as tf

    from common import vocab as vocab_lib
    from trainer.generate import TextModel

    model_dir, _ = trained
    model = keras.models.load_model(model_dir / "model.keras")
    vocab = vocab_lib.read_vocab(str(model_dir / "vocab.txt"))
    index = {t: i for i, t in enumerate(vocab)}
    ids = [index[c] for c in "it has"]
    for _ in range(20):
        ids.append(int(np.argmax(np.asarray(model(np.array([ids], "int32")))[0, -1])))
    expected = "it has" + "".join(vocab[i] for i in ids[6:])
    text_model = TextModel(model, vocab, "d2l", "char")
    got = text_model.greedy(tf.constant(["it has", "the time machine"]), 20)["text"].numpy()
    assert got[0].decode() == expected
    assert got[1].decode().startswith("the time machine")
    one = text_model.greedy(tf.constant(["the time machine"]), 20)["text"].numpy()[0]
    assert one == got[1], "rows of a batch must not affect each other"


def test_rerun_after_completion_trains_nothing(trained, tiny_data):
    model_dir, first = trained
    again = train_and_evaluate(TrainConfig.from_flat(**TINY_TRAIN), str(tiny_data), str(model_dir))
    assert again["epochs"] == 2 and again["val_ppl"] == first["val_ppl"]


def test_changed_vocabulary_or_architecture_refuses_to_resume(trained, tiny_data, tmp_path):
    model_dir, _ = trained
    with pytest.raises(UserError, match="architecture"):
        train_and_evaluate(TrainConfig.from_flat(**{**TINY_TRAIN, "num_hiddens": 24}), str(tiny_data), str(model_dir))
    other = tmp_path / "data"
    from pipeline import transform
    from pipeline.preprocessing import preprocess
    preprocess(["timemachine"], str(other), transform.PreprocessConfig(num_steps=16, normalize="none"))
    with pytest.raises(UserError, match="vocabulary"):
        train_and_evaluate(TrainConfig.from_flat(**TINY_TRAIN), str(other), str(model_dir))


def test_divergence_stops_with_a_message(tiny_data, tmp_path):
    cfg = TrainConfig.from_flat(**{**TINY_TRAIN, "lr": 1e6, "clip_norm": 0.0, "optimizer": "sgd", "cell": "rnn"})
    with pytest.raises(UserError, match="diverged"):
        train_and_evaluate(cfg, str(tiny_data), str(tmp_path / "m"))


def test_steps_per_execution_trains_the_same_model(tiny_data, tmp_path):
    """Several steps per compiled call is an execution detail: same steps, same numbers."""
    one = train_and_evaluate(TrainConfig.from_flat(**{**TINY_TRAIN, "epochs": 1}), str(tiny_data), str(tmp_path / "a"))
    three = train_and_evaluate(TrainConfig.from_flat(**{**TINY_TRAIN, "epochs": 1, "steps_per_execution": 3}),
                               str(tiny_data), str(tmp_path / "b"))
    for key in ("train_ppl", "val_ppl"):
        assert three[key] == pytest.approx(one[key], rel=1e-4), key
    assert three["sample"] == one["sample"]


def test_fixed_size_epochs_repeat_the_windows_and_lr_halves_on_a_plateau(tiny_data, tmp_path):
    """--steps-per-epoch: the training stream repeats and an epoch is that many batches; with
    --reduce-lr-patience 1 an lr too small to move val perplexity by 1e-4 is halved after one flat epoch."""
    import tensorflow as tf

    from trainer.data import load_data_info
    from trainer.training import fit_data

    cfg = TrainConfig.from_flat(**{**TINY_TRAIN, "epochs": 3, "steps_per_epoch": 2, "optimizer": "adam", "lr": 1e-9,
                         "reduce_lr_patience": 1})
    info = load_data_info(str(tiny_data))
    train_ds, valid_ds, throughput, batches = fit_data(cfg, info)
    assert train_ds.cardinality() == tf.data.INFINITE_CARDINALITY and valid_ds.cardinality() > 0
    assert throughput.tokens_per_epoch == 2 * cfg.run.batch_size * info.num_steps
    assert fit_data(cfg.replace(steps_per_epoch=None), info)[2].tokens_per_epoch == info.num_train * info.num_steps
    metrics = train_and_evaluate(cfg, str(tiny_data), str(tmp_path / "m"))
    assert metrics["epochs"] == 3 and metrics["hparams"]["steps_per_epoch"] == 2
    rows = list(csv.DictReader(open(tmp_path / "m" / "history.csv")))
    lrs = [float(r["learning_rate"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-9) and lrs[-1] == pytest.approx(0.5e-9), lrs


def test_throughput_counts_the_batches_an_epoch_ran():
    """An epoch a Deadline cuts short after 3 of 10 batches is credited with 3 batches of tokens, and a
    short last batch does not push an epoch past its token count."""
    from trainer.callbacks import Throughput

    throughput = Throughput(tokens_per_epoch=950, tokens_per_batch=100)
    logs = {}
    throughput.on_epoch_begin(0)
    for batch in range(3):
        throughput.on_train_batch_end(batch)
    throughput.on_test_begin()
    time.sleep(0.01)
    throughput.on_test_end()
    throughput.on_epoch_end(0, logs)
    assert logs["tokens_per_s"] * logs["train_seconds"] == pytest.approx(300)
    assert logs["valid_seconds"] >= 0.01
    throughput.on_epoch_begin(1)
    throughput.on_train_batch_end(9)  # steps_per_execution: one call for the last steps of the epoch
    throughput.on_epoch_end(1, logs)
    assert logs["tokens_per_s"] * logs["train_seconds"] == pytest.approx(950)
    assert logs["valid_seconds"] == 0.0  # no validation ran this epoch


def test_bad_flags_exit_2(tiny_data, tmp_path):
    """Flags are checked as they are parsed (one line, exit 2, before TensorFlow loads); what needs the data is
    checked by the library before any work (the command prints its UserError the same way)."""
    from common.cli import UserError

    cases = [(["--num-layers", "0"], "num_layers"), (["--num-hiddens", "0"], "num_hiddens"),
             (["--cell", "transformer"], "--cell"),
             (["--epochs", "0"], "epochs"), (["--steps-per-execution", "0"], "steps_per_execution"),
             (["--steps-per-epoch", "0"], "steps_per_epoch"), (["--reduce-lr-patience", "-1"], "reduce_lr_patience"),
             (["--validation-freq", "0"], "validation_freq")]
    for flags, needle in cases:
        proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "m"), *flags)
        assert_user_error(proc, needle)
    with pytest.raises(UserError, match="--batch-size 100000 is larger than"):
        train_and_evaluate(TrainConfig.from_flat(batch_size=100_000), str(tiny_data), str(tmp_path / "m"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="metadata.json"):
        train_and_evaluate(TrainConfig(), str(empty), str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


@pytest.mark.reliability
def test_a_crash_while_checkpointing_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """Backup and best/last checkpoints are written beside and renamed: a failure at the rename (where
    a SIGKILL mid-write would land) keeps the previous files loadable and leaves no temporary."""
    import keras

    from trainer import callbacks as cb
    from trainer.config import ModelConfig
    from trainer.model import build_model

    model = build_model(ModelConfig(vocab_size=5, num_hiddens=4))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    backup = cb.AtomicBackupAndRestore(str(tmp_path / "backup"))
    last = cb.AtomicModelCheckpoint(str(tmp_path / "last.weights.h5"))
    for callback in (backup, last):
        callback.set_model(model)
    backup.on_epoch_end(0)
    last.on_epoch_end(0, {})
    saved = [w.copy() for w in model.get_weights()]

    model.set_weights([w + 1.0 for w in saved])
    def crash(*args):
        raise OSError("killed")
    monkeypatch.setattr(os, "replace", crash)
    for save in (lambda: backup.on_epoch_end(1), lambda: last.on_epoch_end(1, {})):
        with pytest.raises(OSError, match="killed"):
            save()
    monkeypatch.undo()

    assert json.loads((tmp_path / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    for path in (tmp_path / "backup" / "latest.weights.h5", tmp_path / "last.weights.h5"):
        fresh = build_model(ModelConfig(vocab_size=5, num_hiddens=4))
        fresh.load_weights(str(path))
        for got, want in zip(fresh.get_weights(), saved):
            np.testing.assert_array_equal(got, want)
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert keras.callbacks.BackupAndRestore in type(backup).__mro__


def test_latest_state_is_saved_at_most_every_interval_and_at_the_end(tmp_path):
    """With short epochs the backup and last.weights.h5 are written at most every min_interval_s seconds,
    and whatever was skipped is written when training ends (best weights: the next test)."""
    from trainer import callbacks as cb
    from trainer.config import ModelConfig
    from trainer.model import build_model

    model = build_model(ModelConfig(vocab_size=5, num_hiddens=4))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    backup = cb.AtomicBackupAndRestore(str(tmp_path / "backup"), min_interval_s=3600, delete_checkpoint=False)
    last = cb.AtomicModelCheckpoint(str(tmp_path / "last.weights.h5"), min_interval_s=3600)
    record = tmp_path / "backup" / "training_metadata.json"
    for callback in (backup, last):
        callback.set_model(model)
    for epoch in range(3):
        model.set_weights([w * 0 + epoch for w in model.get_weights()])
        backup.on_epoch_end(epoch)
        last.on_epoch_end(epoch, {})
        assert json.loads(record.read_text())["epoch"] == 1  # only the first epoch's state so far
    for callback in (backup, last):
        callback.on_train_end()
    assert json.loads(record.read_text())["epoch"] == 3
    for path in (tmp_path / "backup" / "latest.weights.h5", tmp_path / "last.weights.h5"):
        fresh = build_model(ModelConfig(vocab_size=5, num_hiddens=4))
        fresh.load_weights(str(path))
        assert all(np.all(w == 2) for w in fresh.get_weights())
    with pytest.raises(ValueError, match="best"):
        cb.AtomicModelCheckpoint(str(tmp_path / "best.weights.h5"), min_interval_s=10, save_best_only=True,
                                 monitor="loss")


def test_best_weights_are_held_between_writes_and_the_written_best_is_what_resumes_compare_to(tmp_path):
    """A new best within min_interval_s of the last write is kept in memory and written when training ends,
    with its own weights (not the last epoch's); best.json names the epoch and value the file holds, and a
    run resumed after a crash compares against that, not against a better value that was never written."""
    from trainer import callbacks as cb
    from trainer.config import ModelConfig
    from trainer.model import build_model

    model = build_model(ModelConfig(vocab_size=5, num_hiddens=4))
    weights, record = tmp_path / "best.weights.h5", tmp_path / "best.json"
    best = cb.BestWeightsCheckpoint(str(weights), str(record), "val_loss", min_interval_s=3600)
    best.set_model(model)

    def load():
        fresh = build_model(ModelConfig(vocab_size=5, num_hiddens=4))
        fresh.load_weights(str(weights))
        return {float(np.unique(w)[0]) for w in fresh.get_weights()}

    for epoch, loss in enumerate([3.0, 2.0, 1.0, 1.5]):
        model.set_weights([w * 0 + epoch for w in model.get_weights()])
        best.on_epoch_end(epoch, {"val_loss": loss})
    assert load() == {0.0} and json.loads(record.read_text()) == {"epoch": 0, "val_loss": 3.0}  # crash here
    resumed = cb.BestWeightsCheckpoint(str(weights), str(record), "val_loss", min_interval_s=3600,
                                       initial_value_threshold=cb.BestWeightsCheckpoint.read_record(str(record))
                                       ["val_loss"])
    resumed.set_model(model)
    resumed.on_epoch_end(4, {"val_loss": 2.5})  # worse than the unwritten 1.0, better than the file's 3.0
    resumed.on_train_end()  # the first write of a run is immediate, so nothing was pending
    assert load() == {3.0} and json.loads(record.read_text()) == {"epoch": 4, "val_loss": 2.5}
    best.on_train_end()  # the first run, had it ended: its held best (epoch 2), not the current weights
    assert load() == {2.0} and json.loads(record.read_text()) == {"epoch": 2, "val_loss": 1.0}
    assert {float(np.unique(w)[0]) for w in model.get_weights()} == {3.0}  # training's weights untouched
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


@pytest.mark.reliability
def test_sigkill_during_training_resumes_to_the_same_epoch_count(tiny_data, tmp_path):
    model_dir = tmp_path / "m"
    cmd = [sys.executable, "-m", "trainer.train", "--data", str(tiny_data), "--model-dir", str(model_dir),
           "--epochs", "6", "--num-hiddens", "16", "--batch-size", "256", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = model_dir / "history.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= 3:  # header + 2 epochs
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(history.read_text().splitlines()) - 1
    assert 2 <= done_before < 6
    finished = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    epochs = [int(r["epoch"]) for r in csv.DictReader(open(history))]
    assert metrics["epochs"] == 6 and epochs == list(range(6))  # one row per epoch: repeated epochs replace theirs


def test_mixed_precision_and_the_layers_form_export_for_cpu(tiny_data, tmp_path):
    """bfloat16 compute on CPU (float16 on GPUs) trains; a layers-form (cuDNN-eligible) model exports portably."""
    from serving.savedmodel import check_portable, export_model

    cfg = TrainConfig.from_flat(**{**TINY_TRAIN, "epochs": 1, "mixed_precision": True})
    metrics = train_and_evaluate(cfg, str(tiny_data), str(tmp_path / "mp"))
    assert np.isfinite(metrics["val_ppl"])
    import keras
    assert keras.mixed_precision.global_policy().name == "float32"  # restored for the rest of the process
    layers = TrainConfig.from_flat(**{**TINY_TRAIN, "epochs": 1, "form": "layers"})
    assert train_and_evaluate(layers, str(tiny_data), str(tmp_path / "layers"))["form"] == "layers"
    check_portable(export_model(str(tmp_path / "layers"), str(tmp_path / "export")))


def test_fit_steps_are_the_datasets_batches_so_keras_makes_one_iterator_per_epoch(tiny_data):
    """fit() gets each dataset's batch count (or --steps-per-epoch for a repeated stream), and with it Keras's
    epoch iterator reuses the iterator it made at the last epoch's end instead of making another."""
    import keras
    import tensorflow as tf

    from trainer.data import load_data_info
    from trainer.training import fit_data, fit_steps

    cfg = TrainConfig.from_flat(**{**TINY_TRAIN, "batch_size": 4})
    info = load_data_info(str(tiny_data))
    train_ds, valid_ds, _, batches = fit_data(cfg, info)
    assert fit_steps(cfg, train_ds, valid_ds) == {"steps_per_epoch": batches,
                                                  "validation_steps": -(-info.num_valid // 4)}
    repeated = cfg.replace(steps_per_epoch=3)
    train_ds, valid_ds, _, _ = fit_data(repeated, info)
    assert fit_steps(repeated, train_ds, valid_ds)["steps_per_epoch"] == 3
    unknown = tf.data.Dataset.range(8).filter(lambda i: i > 2)  # tf.data cannot count it: fit() counts
    assert fit_steps(cfg, unknown, unknown) == {"steps_per_epoch": None, "validation_steps": None}

    made = []
    dataset = tf.data.Dataset.range(6).map(lambda i: (tf.fill([1], tf.cast(i, tf.float32)),) * 2).batch(2)
    original_iter = type(dataset).__iter__
    type(dataset).__iter__ = lambda self: made.append(1) or original_iter(self)
    try:
        model = keras.Sequential([keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        model.fit(dataset, epochs=3, verbose=0, steps_per_epoch=int(dataset.cardinality()), shuffle=False)
    finally:
        type(dataset).__iter__ = original_iter
    assert len(made) == 3 + 1  # one per epoch, plus the one made after the last (Keras makes it eagerly)


def test_epoch_tensorboard_logs_epochs_and_skips_per_batch_summary_calls(tmp_path):
    """update_freq="epoch": every epoch's scalars for training and validation, and no tf.summary.scalar call
    per batch (Keras's own callback makes one per log per batch, which write nothing)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from trainer.callbacks import EpochTensorBoard

    board = EpochTensorBoard(str(tmp_path / "logs"))
    calls = []
    summary_scalar = board.summary.scalar
    board.summary.scalar = lambda name, *args, **kwargs: calls.append(name) or summary_scalar(name, *args, **kwargs)
    model = keras.Sequential([keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.ones((8, 1), "float32")
    model.fit(x, x, batch_size=2, epochs=2, validation_data=(x, x), verbose=0, callbacks=[board])
    assert not [name for name in calls if name.startswith("batch_")]
    tags = {}
    for split in ("train", "validation"):
        for path in (tmp_path / "logs" / split).iterdir():
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:  # also a "keras" text summary of the model
                    if value.tag.startswith(("epoch_", "batch_")):
                        tags.setdefault(split, []).append((value.tag, event.step))
    assert sorted(tags["train"]) == [("epoch_learning_rate", 0), ("epoch_learning_rate", 1),
                                     ("epoch_loss", 0), ("epoch_loss", 1)]
    assert sorted(tags["validation"]) == [("epoch_loss", 0), ("epoch_loss", 1)]
