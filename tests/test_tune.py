"""The tuning stage: outputs, --hparams hand-over, resume after SIGKILL, chief/worker search, bad ranges."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from common.net import free_port
from tests.conftest import ROOT, assert_user_error, run_cli
from trainer.config import TrainConfig
from trainer.search import SearchConfig, SearchSpace, TuneConfig, tune

TINY_SPACE = ["--min-layers", "1", "--max-layers", "2", "--min-hiddens", "8", "--max-hiddens", "16",
              "--batch-size", "512", "--quiet"]


BASE = TrainConfig.from_flat(batch_size=512, progress="none")


def search(tiny_data, tuner_dir, space, base=BASE, start_points=(), **settings):
    """trainer.search.tune on the tiny data with these search settings (SearchConfig's fields)."""
    return tune(str(tiny_data), str(tuner_dir), TuneConfig(search=SearchConfig(**settings), space=space, base=base),
                start_points)


def test_tiny_search_writes_outputs_and_hparams_reproduce_the_winner(tiny_data, tmp_path):
    space = SearchSpace(min_layers=1, max_layers=2, min_hiddens=8, max_hiddens=16)
    best = search(tiny_data, tmp_path / "t", space, tuner="random", max_trials=3, max_epochs=1)
    for name in ("best_hparams.json", "trials.csv", "pareto.png"):
        assert (tmp_path / "t" / name).exists()
    rows = list(csv.DictReader(open(tmp_path / "t" / "trials.csv")))
    assert len(rows) == 3 and all(r["status"] == "COMPLETED" for r in rows)
    for key in ("num_layers", "num_hiddens", "val_perplexity", "num_params", "train_tokens_per_s", "wall_s"):
        assert all(r[key] not in ("", "nan") for r in rows), key
    assert min(float(r["val_perplexity"]) for r in rows) == pytest.approx(best["val_perplexity"])
    assert os.listdir(tmp_path / "t" / "logs")
    proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "m"),
                   "--hparams", str(tmp_path / "t" / "best_hparams.json"), "--epochs", "1", "--batch-size", "512",
                   "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = json.loads((tmp_path / "m" / "run_config.json").read_text())["model"]
    assert {k: model[k] for k in ("cell", "num_layers", "num_hiddens", "weight_drop")} == \
        {k: best[k] for k in ("cell", "num_layers", "num_hiddens", "weight_drop")}
    # regularisation rates searched on a 0.1 grid are written as such (not 0.30000000000000004)
    assert all(len(r[k]) <= 3 for r in rows for k in ("dropout", "weight_drop")), rows


def test_mixed_precision_trials_build_under_the_mixed_policy_and_best_hparams_carry_it(tiny_data, tmp_path,
                                                                                      monkeypatch):
    import keras

    from trainer import training as train

    policies = []
    original = train.build_training_model

    def recording_build(*args, **kwargs):
        policies.append(keras.mixed_precision.global_policy().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "build_training_model", recording_build)
    space = SearchSpace(min_layers=1, max_layers=1, min_hiddens=8, max_hiddens=8, optimizers=("adam",))
    search(tiny_data, tmp_path / "t", space, base=BASE.replace(mixed_precision=True), tuner="random", max_trials=1,
           max_epochs=1)
    assert policies and set(policies) == {"mixed_bfloat16"}
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the search
    assert json.loads((tmp_path / "t" / "best_hparams.json").read_text())["mixed_precision"] is True


def test_bayesian_search_with_fixed_size_epochs_and_lr_schedule(tiny_data, tmp_path):
    """KerasTuner's BayesianOptimization needs scipy (keras-tuner[bayesian]): it must be installed.
    Trials take the trainer's epoch size and lr schedule (fit_data, lr_schedule_callbacks)."""
    space = SearchSpace(min_layers=1, max_layers=2, min_hiddens=8, max_hiddens=16, optimizers=("adam",))
    base = TrainConfig.from_flat(batch_size=512, progress="none", steps_per_epoch=3, reduce_lr_patience=1)
    best = search(tiny_data, tmp_path / "t", space, base=base, tuner="bayesian", max_trials=2, max_epochs=2)
    rows = list(csv.DictReader(open(tmp_path / "t" / "trials.csv")))
    assert len(rows) == 2 and best["optimizer"] == "adam"
    assert all(r["status"] == "COMPLETED" and int(r["epochs"]) == 2 for r in rows)


@pytest.mark.parametrize("flags,needle", [
    (["--min-layers", "3", "--max-layers", "2"], "--min-layers"),
    (["--min-hiddens", "64", "--max-hiddens", "8"], "--min-hiddens"),
    (["--min-hiddens", "0"], "must be >= 1"), (["--min-layers", "0"], "must be >= 1"),
    (["--tuner", "grid"], "--tuner"), (["--time-budget", "0"], "time-budget"),
    (["--early-stopping", "-1"], "--early-stopping"), (["--steps-per-epoch", "0"], "--steps-per-epoch"),
    (["--reduce-lr-patience", "-1"], "reduce_lr_patience"), (["--max-dropout", "1"], "--max-dropout"),
    (["--max-weight-drop", "-0.1"], "--max-weight-drop"), (["--trial-minutes", "0"], "--trial-minutes"),
    (["--ar", "-2"], "ar must be"), (["--ema", "1"], "ema must be"), (["--input-dropout", "1"],
                                                                      "input_dropout must be"),
    (["--lr-schedule", "warmup_cosine", "--reduce-lr-patience", "2"], "reduce_lr_patience")])
def test_bad_ranges_exit_2(tiny_data, tmp_path, flags, needle):
    assert_user_error(run_cli("trainer.tune", "--data", str(tiny_data), "--tuner-dir", str(tmp_path), *flags),
                      needle)


def _finished(tuner_dir) -> set[str]:
    done = set()
    search = tuner_dir / "search"
    for trial_dir in search.glob("trial_*"):
        path = trial_dir / "trial.json"
        if path.exists() and json.loads(path.read_text())["status"] == "COMPLETED":
            done.add(json.loads(path.read_text())["trial_id"])
    return done


@pytest.mark.reliability
@pytest.mark.parametrize("kind", ["hyperband", "random"])
def test_sigkill_then_resume_repeats_no_finished_trial(tiny_data, tmp_path, kind):
    tuner_dir = tmp_path / "t"
    cmd = [sys.executable, "-m", "trainer.tune", "--data", str(tiny_data), "--tuner-dir", str(tuner_dir),
           "--tuner", kind, "--max-trials", "5", "--max-epochs", "3", *TINY_SPACE]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and len(_finished(tuner_dir)) < 2:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _finished(tuner_dir)
    assert len(before) >= 2
    snapshot = {t: (tuner_dir / "search" / f"trial_{t}" / "trial.json").read_text() for t in before}
    finished = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    runs = Counter(line.split()[0] for line in (tuner_dir / "runs.log").read_text().splitlines())
    assert all(runs[t] == 1 for t in before), runs  # no finished trial ran again
    assert all((tuner_dir / "search" / f"trial_{t}" / "trial.json").read_text() == snapshot[t] for t in before)
    rows = list(csv.DictReader(open(tuner_dir / "trials.csv")))
    assert len(rows) == 5 and (tuner_dir / "best_hparams.json").exists()


@pytest.mark.slow
def test_chief_and_two_workers_share_the_search(tiny_data, tmp_path):
    tuner_dir = tmp_path / "t"
    cmd = [sys.executable, "-m", "trainer.tune", "--data", str(tiny_data), "--tuner-dir", str(tuner_dir),
           "--tuner", "random", "--max-trials", "6", "--max-epochs", "1", *TINY_SPACE]
    port = str(free_port())
    procs = {}
    for tuner_id in ("chief", "tuner0", "tuner1"):
        env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
               "KERASTUNER_ORACLE_PORT": port}
        procs[tuner_id] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True)
        if tuner_id == "chief":
            time.sleep(3)
    outputs = {k: p.communicate(timeout=900)[0] for k, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), {k: o[-2000:] for k, o in outputs.items()}
    runs = [line.split() for line in (tuner_dir / "runs.log").read_text().splitlines()]
    by_trial = Counter(t for t, _ in runs)
    by_worker = Counter(w for _, w in runs)
    assert len(by_trial) == 6 and max(by_trial.values()) == 1, runs
    assert set(by_worker) == {"tuner0", "tuner1"}, by_worker
    rows = list(csv.DictReader(open(tuner_dir / "trials.csv")))
    assert len(rows) == 6 and (tuner_dir / "best_hparams.json").exists()


def test_time_budget_stops_launching_trials(tiny_data, tmp_path):
    space = SearchSpace(min_layers=1, max_layers=1, min_hiddens=8, max_hiddens=8)
    start = time.time()
    search(tiny_data, tmp_path / "t", space, tuner="random", max_trials=50, max_epochs=1, time_budget=0.05)
    rows = list(csv.DictReader(open(tmp_path / "t" / "trials.csv")))
    assert 1 <= len(rows) < 50 and time.time() - start < 120
    assert (tmp_path / "t" / "best_hparams.json").exists()


def test_trial_minutes_gives_every_trial_the_same_time(tiny_data, tmp_path):
    """Epochs to spare and no early stopping: each trial ends at its own time limit, not at max_epochs."""
    space = SearchSpace(min_layers=1, max_layers=1, min_hiddens=8, max_hiddens=8)
    search(tiny_data, tmp_path / "t", space, tuner="random", max_trials=2, max_epochs=10000, early_stopping=0,
           trial_minutes=0.05)
    rows = list(csv.DictReader(open(tmp_path / "t" / "trials.csv")))
    assert len(rows) == 2
    for row in rows:
        assert 1 <= int(row["epochs"]) < 10000 and 3 <= float(row["wall_s"]) < 60


def test_keras_tuner_state_files_are_replaced_atomically(tmp_path, monkeypatch):
    """A crash while KerasTuner saves oracle.json/trial.json must leave the previous file whole."""
    from keras_tuner.src import utils as kt_utils
    from keras_tuner.src.engine import stateful

    from trainer.compat import atomic_tuner_state_files

    atomic_tuner_state_files()
    path = str(tmp_path / "oracle.json")
    kt_utils.save_json(path, {"trials": 1})

    class Crash(Exception):
        pass

    def crash(*args, **kwargs):
        raise Crash

    import tensorflow as tf
    monkeypatch.setattr(tf.io.gfile, "rename", crash)
    with pytest.raises(Crash):
        stateful.utils.save_json(path, {"trials": 2})  # the module KerasTuner's Stateful.save calls
    assert json.loads(open(path).read()) == {"trials": 1}


def test_a_finished_trial_left_listed_as_ongoing_is_not_run_again(tiny_data, tmp_path):
    """KerasTuner saves oracle.json before it pops the ended trial from ongoing_trials; a kill after that save
    used to re-run the finished trial on resume (seen as a flaky SIGKILL test). Reproduced by writing that state."""
    from trainer.search import make_hypermodel, make_tuner

    space = SearchSpace(min_layers=1, max_layers=1, min_hiddens=8, max_hiddens=8, cells=("gru",), max_dropout=0.0,
                        optimizers=("sgd",))
    base = TrainConfig.from_flat(batch_size=512, progress="none")
    search(tiny_data, tmp_path, space, base=base, tuner="random", max_trials=1, max_epochs=1)
    oracle_file = tmp_path / "search" / "oracle.json"
    state = json.loads(oracle_file.read_text())
    finished = sorted(p.name.split("_", 1)[1] for p in (tmp_path / "search").glob("trial_*"))
    state["ongoing_trials"] = {"tuner0": finished[0]}  # the state a kill right after end_trial's save leaves
    oracle_file.write_text(json.dumps(state))
    tuner = make_tuner("random", make_hypermodel(base, space, 28), str(tmp_path), 2, 1, 1, 0)
    assert tuner.oracle.trials[finished[0]].status == "COMPLETED"
    assert finished[0] not in tuner.oracle._retry_queue


START_POINT = {"cell": "lstm", "num_layers": 2, "num_hiddens": 16, "dropout": 0.1, "weight_drop": 0.2,
               "optimizer": "adam", "lr": 0.005, "stateful": False}  # best_hparams.json's keys, one not searched


def test_start_points_run_first_and_a_resumed_search_does_not_repeat_them(tiny_data, tmp_path):
    space = SearchSpace(min_layers=1, max_layers=2, min_hiddens=8, max_hiddens=16, optimizers=("sgd", "adam"))
    base = TrainConfig.from_flat(batch_size=512, progress="none")
    search(tiny_data, tmp_path / "t", space, base=base, start_points=[START_POINT], tuner="random", max_trials=1,
           max_epochs=1)
    first = list(csv.DictReader(open(tmp_path / "t" / "trials.csv")))
    assert len(first) == 1
    assert {k: first[0][k] for k in ("cell", "num_layers", "num_hiddens", "dropout", "weight_drop", "optimizer")} \
        == {"cell": "lstm", "num_layers": "2", "num_hiddens": "16", "dropout": "0.1", "weight_drop": "0.2",
            "optimizer": "adam"}
    assert float(first[0]["lr"]) == pytest.approx(0.005)
    # resumed with the same start point: the oracle's own points follow, the start point is not run twice
    search(tiny_data, tmp_path / "t", space, base=base, start_points=[START_POINT], tuner="random", max_trials=3,
           max_epochs=1)
    rows = list(csv.DictReader(open(tmp_path / "t" / "trials.csv")))
    assert len(rows) == 3 and all(r["status"] == "COMPLETED" for r in rows)
    again = [r for r in rows if (r["cell"], r["num_hiddens"], r["lr"]) == ("lstm", "16", first[0]["lr"])]
    assert len(again) == 1, rows


def test_start_points_lead_hyperband_too(tiny_data, tmp_path):
    space = SearchSpace(min_layers=1, max_layers=2, min_hiddens=8, max_hiddens=16, optimizers=("adam",))
    search(tiny_data, tmp_path / "t", space, start_points=[START_POINT], tuner="hyperband", max_trials=1, max_epochs=2)
    row = next(csv.DictReader(open(tmp_path / "t" / "trials.csv")))
    assert (row["cell"], row["num_layers"], row["num_hiddens"], row["dropout"]) == ("lstm", "2", "16", "0.1")
    assert float(row["lr"]) == pytest.approx(0.005)  # not a draw from the log-uniform range


def test_start_values_match_the_declared_space_and_refuse_points_outside_it():
    import keras_tuner as kt

    from trainer.search import declare_hyperparameters, start_values

    space = SearchSpace(min_layers=1, max_layers=3, min_hiddens=64, max_hiddens=256, optimizers=("adam",))
    values = start_values({**START_POINT, "num_hiddens": 128}, space)
    hp = kt.HyperParameters()
    declare_hyperparameters(hp, space)  # the space the oracle knows: every start value names one of its entries
    assert set(values) <= {h.name for h in hp.space}
    assert values == {"num_layers": 2, "num_hiddens": 128, "cell": "lstm", "optimizer": "adam", "adam_lr": 0.005,
                      "dropout": 0.1, "weight_drop": 0.2}
    for change, needle in [({"num_hiddens": 100}, "num_hiddens 100"), ({"num_layers": 4}, "num_layers 4"),
                           ({"optimizer": "sgd"}, "optimizer 'sgd'"), ({"lr": 0.5}, "lr 0.5"),
                           ({"dropout": 0.7}, "dropout 0.7"), ({"cell": "rnn"}, "cell 'rnn'")]:
        with pytest.raises(ValueError, match=needle):
            start_values({**START_POINT, "num_hiddens": 128, **change}, space)
    with pytest.raises(ValueError, match="no lr"):
        start_values({k: v for k, v in START_POINT.items() if k != "lr"}, space)
    no_drop = SearchSpace(min_layers=1, max_layers=3, min_hiddens=64, max_hiddens=256, cells=("lstm",),
                          max_dropout=0.0, optimizers=("adam",), max_weight_drop=0.0)
    assert "dropout" not in start_values({**START_POINT, "num_hiddens": 64, "dropout": 0, "weight_drop": 0}, no_drop)


@pytest.mark.parametrize("text,needle", [("{", "Expecting"), ("[1]", "JSON object"),
                                         ('{"cell": "gru", "num_layers": 9, "num_hiddens": 16, '
                                          '"optimizer": "sgd", "lr": 1}', "num_layers 9")])
def test_bad_start_point_exits_2(tiny_data, tmp_path, text, needle):
    (tmp_path / "p.json").write_text(text)
    assert_user_error(run_cli("trainer.tune", "--data", str(tiny_data), "--tuner-dir", str(tmp_path / "t"),
                              *TINY_SPACE, "--start-with", str(tmp_path / "p.json")), needle)


def test_each_trial_warms_up_and_anneals_its_own_rate_over_its_own_time():
    """callbacks.CosineOverEachFit (trainer.tune --lr-schedule warmup_cosine): every fit() starts the schedule
    again from the rate the model was compiled with; warm-up over 2 steps, then cosine to a tenth by the
    clock (1 s a batch here, 4 s allowed), against hand-computed rates."""
    import keras
    import numpy as np

    from trainer.callbacks import CosineOverEachFit

    now = [0.0]

    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rates = []

        def on_train_batch_begin(self, batch, logs=None):
            self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

        def on_train_batch_end(self, batch, logs=None):
            now[0] += 1.0

    schedule = CosineOverEachFit(floor=0.1, warmup_steps=2, total_steps=1000, seconds=4.0, clock=lambda: now[0])
    x = np.ones((6, 1), "float32")
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    for peak in (0.2, 0.05):  # two trials, each compiled with its own rate
        model.compile(optimizer=keras.optimizers.SGD(peak), loss="mse")
        recorder = Recorder()
        model.fit(x, x, batch_size=1, epochs=1, verbose=0, callbacks=[schedule, recorder])
        cosine = [peak * (0.1 + 0.45 * (1 + np.cos(np.pi * p))) for p in (0.5, 0.75, 1.0, 1.0)]
        assert recorder.rates == pytest.approx([peak / 2, peak, *cosine], rel=1e-5)


def test_trial_cosine_needs_trial_minutes_and_runs_with_them(tiny_data, tmp_path):
    """Annealing over a trial needs the trial's time limit; with it, a search completes its trials."""
    from common.cli import UserError

    space = SearchSpace(min_layers=1, max_layers=1, min_hiddens=8, max_hiddens=8, optimizers=("adam",))
    base = TrainConfig.from_flat(batch_size=512, progress="none", lr_schedule="warmup_cosine", warmup_steps=2)
    with pytest.raises(UserError, match="--trial-minutes"):
        search(tiny_data, tmp_path / "no", space, base=base, tuner="random", max_trials=1, max_epochs=2)
    search(tiny_data, tmp_path / "t", space, base=base, tuner="random", max_trials=2, max_epochs=2, trial_minutes=1)
    rows = list(csv.DictReader(open(tmp_path / "t" / "trials.csv")))
    assert len(rows) == 2 and all(r["status"] == "COMPLETED" for r in rows)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_quiet_trial_line_shows_the_chosen_optimizers_rate(optimizer):
    """KerasTuner's values hold sgd_lr / adam_lr, not lr: the line once printed `lr nan` for every trial."""
    import keras_tuner as kt

    from trainer.search import declare_hyperparameters, trial_line

    hp = kt.HyperParameters()
    declare_hyperparameters(hp, SearchSpace(optimizers=(optimizer,)))
    line = trial_line("7", hp.values, [{"val_perplexity": [9.5, 8.25]}], {"epochs": 3, "wall_s": 4.0})
    rate = hp.values[f"{optimizer}_lr"]
    assert f"{optimizer} lr {rate:.3g}," in line and "nan" not in line
    assert "val perplexity 8.250" in line
