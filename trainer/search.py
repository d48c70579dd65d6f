"""The hyperparameter search as a library: KerasTuner over depth × width (and the optimiser's settings),
trials trained as trainer.training trains, results written as best_hparams.json, trials.csv and pareto.png."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from common import atomic, cli, locks, paths
from common.cli import UserError
from trainer import compat
from trainer.config import SECTIONS, ArchitectureConfig, TrainConfig

OBJECTIVE = "val_perplexity"


# best_hparams.json's keys
HPARAM_KEYS = ("cell", "num_layers", "num_hiddens", "dropout", "weight_drop", "optimizer", "lr")


# Regularisers set once for a whole search (not searched): every trial trains with them, best_hparams.json
# carries them to trainer.train, and the benches record them beside HPARAM_KEYS.
SHARED_REGULARISERS = ("input_dropout", "ar", "tar", "ema")


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """Space: the ranges searched (cell, depth, width, dropout, weight drop, optimizer and its rate)"""

    min_layers: int = 1
    """fewest recurrent layers searched"""
    max_layers: int = 8
    """most recurrent layers searched"""
    min_hiddens: int = 64
    """narrowest layer searched"""
    max_hiddens: int = 2048
    """widest layer searched"""
    cells: tuple[Literal["gru", "lstm", "rnn", "scratch"], ...] = ("gru", "lstm")
    """cells searched"""
    max_dropout: float = 0.5
    """largest dropout searched"""
    optimizers: tuple[Literal["sgd", "adam"], ...] = ("sgd", "adam")
    """optimizers searched, each with its own learning-rate range"""
    max_weight_drop: float = 0.5
    """largest weight drop (DropConnect on the recurrent kernels) searched; 0: none"""

    def __post_init__(self):
        object.__setattr__(self, "cells", tuple(self.cells))  # from YAML or JSON lists too
        object.__setattr__(self, "optimizers", tuple(self.optimizers))
        if self.min_layers < 1 or self.min_hiddens < 1:
            raise ValueError("depth and width must be >= 1")
        if self.min_layers > self.max_layers:
            raise ValueError(f"--min-layers {self.min_layers} > --max-layers {self.max_layers}")
        if self.min_hiddens > self.max_hiddens:
            raise ValueError(f"--min-hiddens {self.min_hiddens} > --max-hiddens {self.max_hiddens}")
        if not self.cells or not self.optimizers:
            raise ValueError("search at least one cell and one optimizer")
        if not 0.0 <= self.max_dropout < 1.0:
            raise ValueError(f"--max-dropout must be in [0, 1), got {self.max_dropout}")
        if not 0.0 <= self.max_weight_drop < 1.0:
            raise ValueError(f"--max-weight-drop must be in [0, 1), got {self.max_weight_drop}")

    def widths(self) -> list[int]:
        """Powers of two within the range, plus its ends: log-spaced widths."""
        widths = {self.min_hiddens, self.max_hiddens}
        w = 1
        while w <= self.max_hiddens:
            if w >= self.min_hiddens:
                widths.add(w)
            w *= 2
        return sorted(widths)


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """Search: the oracle and the budget"""

    tuner: Literal["hyperband", "random", "bayesian"] = "hyperband"
    """KerasTuner oracle"""
    max_trials: int | None = None
    """trials to run (random/bayesian; default: 10, or no limit with time_budget)"""
    max_epochs: int = 10
    """epochs of the longest trial (Hyperband's top bracket)"""
    executions_per_trial: int = 1
    """models trained per point, scores averaged"""
    time_budget: float | None = None
    """stop launching trials after this many minutes; a trial in flight ends then too (default: none)"""
    trial_minutes: float | None = None
    """end each trial after this many minutes too: trials compared on equal time (default: no limit)"""
    early_stopping: int = 3
    """end a trial after this many epochs without a better validation perplexity (0: off)"""

    def __post_init__(self):
        for name in ("max_epochs", "executions_per_trial"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_trials is not None and self.max_trials < 1:
            raise ValueError(f"max_trials must be >= 1, got {self.max_trials}")
        for name in ("time_budget", "trial_minutes"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:  # NaN too: a budget that never ends
                raise ValueError(f"{name} must be a finite number of minutes > 0, got {value}")
        if self.early_stopping < 0:
            raise ValueError(f"early_stopping must be >= 0 epochs, got {self.early_stopping}")


@dataclass(frozen=True, kw_only=True)
class TuneConfig:
    """A search: the oracle and budget, the space, and the training settings every trial shares (the searched
    fields of `base` are each trial's point instead)."""

    search: SearchConfig = field(default_factory=SearchConfig)
    space: SearchSpace = field(default_factory=SearchSpace)
    base: TrainConfig = field(default_factory=TrainConfig)


# trainer.tune's sections: the search's own, then the training sections every trial shares (the model section is
# the search space's to choose)
TUNE_SECTIONS = {"search": SearchConfig, "space": SearchSpace,
                 **{name: section for name, section in SECTIONS.items() if name != "model"}}


def declare_hyperparameters(hp, space: SearchSpace) -> dict:
    """The one declaration of the search space; returns TrainConfig fields for this point."""
    values = {
        "num_layers": hp.Int("num_layers", space.min_layers, space.max_layers),
        "num_hiddens": hp.Choice("num_hiddens", space.widths(), ordered=True),
        "cell": hp.Choice("cell", list(space.cells)),
        # rates on a 0.1 grid, rounded: KerasTuner's steps give 0.30000000000000004
        "dropout": round(hp.Float("dropout", 0.0, space.max_dropout, step=0.1), 2) if space.max_dropout > 0 else 0.0,
        "weight_drop": (round(hp.Float("weight_drop", 0.0, space.max_weight_drop, step=0.1), 2)
                        if space.max_weight_drop > 0 else 0.0),
        "optimizer": hp.Choice("optimizer", list(space.optimizers)),
    }
    with hp.conditional_scope("optimizer", ["sgd"]):
        sgd_lr = hp.Float("sgd_lr", 0.25, 4.0, sampling="log") if "sgd" in space.optimizers else None
    with hp.conditional_scope("optimizer", ["adam"]):
        adam_lr = hp.Float("adam_lr", 1e-3, 3e-2, sampling="log") if "adam" in space.optimizers else None
    lr = sgd_lr if values["optimizer"] == "sgd" else adam_lr
    # KerasTuner leaves a conditional value unset while it discovers the space: use the book's lr
    values["lr"] = lr if lr is not None else (2.0 if values["optimizer"] == "sgd" else 3e-3)
    return values


def start_values(point: dict, space: SearchSpace) -> dict:
    """A point written with best_hparams.json's keys (cell, num_layers, num_hiddens, dropout, weight_drop,
    optimizer, lr) as KerasTuner values of this space, checked against the space declare_hyperparameters
    declares; other keys (stateful, ar, tar) are not searched and are ignored. Raises ValueError naming the
    first key that lies outside the space."""
    import keras_tuner as kt

    missing = [k for k in ("cell", "num_layers", "num_hiddens", "optimizer", "lr") if k not in point]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    declared = kt.HyperParameters()
    declare_hyperparameters(declared, space)
    given = {"num_layers": point["num_layers"], "num_hiddens": point["num_hiddens"], "cell": point["cell"],
             "dropout": point.get("dropout") or 0.0, "weight_drop": point.get("weight_drop") or 0.0,
             "optimizer": point["optimizer"], f"{point['optimizer']}_lr": point["lr"]}
    values = {}
    for hp in declared.space:  # declaration order: the optimizer is checked before its lr
        if hp.name not in given:
            continue  # the other optimizer's lr
        value, name = given.pop(hp.name), "lr" if hp.name.endswith("_lr") else hp.name
        if isinstance(hp, kt.engine.hyperparameters.Choice):
            ok, allowed = value in hp.values, f"one of {list(hp.values)}"
        else:
            numeric = isinstance(value, int if isinstance(hp, kt.engine.hyperparameters.Int) else (int, float))
            ok = numeric and not isinstance(value, bool) and hp.min_value <= value <= hp.max_value
            allowed = f"{hp.min_value:g}..{hp.max_value:g}"
        if not ok:
            raise ValueError(f"{name} {point.get(name)!r} is outside the search space ({allowed})")
        values[hp.name] = float(value) if isinstance(hp, kt.engine.hyperparameters.Float) else value
    for name, value in given.items():  # not searched here (a rate whose largest is 0): only 0 fits
        if value:
            raise ValueError(f"{name} {value!r} is outside the search space (0: not searched)")
    return values


def make_hypermodel(base: TrainConfig, space: SearchSpace, vocab_size: int, steps_per_epoch: int | None = None):
    import keras_tuner as kt

    from trainer.training import build_training_model, model_config_for, precision_policy

    class DeepRNNHyperModel(kt.HyperModel):
        """The trainer's own builder and compile step, with hyperparameters from the search space."""

        last_num_params: int | None = None  # of the model built last, for the trial's cost record

        def build(self, hp):
            cfg = base.replace(**declare_hyperparameters(hp, space))
            # here, not around the search: KerasTuner clears the Keras session, and so the policy, per trial
            with precision_policy(cfg.run.mixed_precision):
                model = build_training_model(cfg, model_config_for(cfg, vocab_size), steps_per_epoch or 1)
            self.last_num_params = int(model.count_params())
            return model

    return DeepRNNHyperModel()


def recording(tuner_class):
    """tuner_class with a run_trial that hands the stock one to `trial_recorder(trial, run)` when set: KerasTuner's
    documented extension point (subclass a Tuner, override run_trial) for recording what each trial cost."""

    class RecordingTuner(tuner_class):
        trial_recorder = None  # callable(trial, run) → what run() returns

        def run_trial(self, trial, *args, **kwargs):
            run = lambda: super(RecordingTuner, self).run_trial(trial, *args, **kwargs)  # noqa: E731
            return self.trial_recorder(trial, run) if self.trial_recorder else run()

    RecordingTuner.__name__ = RecordingTuner.__qualname__ = f"Recording{tuner_class.__name__}"
    return RecordingTuner


def make_tuner(kind: str, hypermodel, directory: str, max_trials: int | None, max_epochs: int,
               executions: int, seed: int, objective_name: str = OBJECTIVE):
    import keras_tuner as kt

    compat.atomic_tuner_state_files()

    objective = kt.Objective(objective_name, direction="min")
    common = dict(objective=objective, directory=directory, project_name="search", overwrite=False, seed=seed,
                  executions_per_trial=executions, max_consecutive_failed_trials=3)
    if kind == "hyperband":
        tuner = recording(kt.Hyperband)(hypermodel, max_epochs=max_epochs, factor=3, **common)
        tuner.oracle.max_trials = max_trials  # Hyperband itself has no trial limit
    else:
        cls = kt.RandomSearch if kind == "random" else kt.BayesianOptimization
        tuner = recording(cls)(hypermodel, max_trials=max_trials or 10, **common)
    compat.drop_finished_retries(tuner.oracle)
    return tuner


def limit_by_time(oracle, deadline: float) -> None:
    """Stops handing out trials once the wall-clock budget is spent; finished trials are kept."""
    create_trial = oracle.create_trial

    def create_trial_within_budget(tuner_id):
        if time.time() > deadline and not oracle.ongoing_trials.get(tuner_id):
            oracle.max_trials = len(oracle.trials)  # the oracle's own stop path
        return create_trial(tuner_id)

    oracle.create_trial = create_trial_within_budget


def _trial_rows(tuner, space: SearchSpace, base: TrainConfig, vocab_size: int) -> list[dict]:
    from trainer.model import build_model
    from trainer.training import model_config_for

    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        hp = trial.hyperparameters
        values = {}
        try:
            values = declare_hyperparameters(hp.copy(), space)
        except Exception:
            values = {k: hp.values.get(k) for k in ("num_layers", "num_hiddens", "cell", "optimizer")}
        extra_path = os.path.join(tuner.get_trial_dir(trial_id), "extra.json")
        extra = json.load(open(extra_path)) if os.path.exists(extra_path) else {}
        score = trial.score
        params = extra.get("num_params")
        if params is None and values.get("num_layers"):
            params = build_model(model_config_for(base.replace(**values), vocab_size)).count_params()
        rows.append({"trial_id": trial_id, **values,
                     "epochs": hp.values.get("tuner/epochs", extra.get("epochs")),
                     "val_perplexity": score if score is not None else math.nan,
                     "num_params": params, "train_tokens_per_s": extra.get("tokens_per_s", math.nan),
                     "wall_s": extra.get("wall_s", math.nan), "tuner_id": extra.get("tuner_id", ""),
                     "status": trial.status})
    return rows


def _finished(rows: list[dict]) -> list[dict]:
    """Trials that completed with a finite validation perplexity."""
    return [r for r in rows if r["status"] == "COMPLETED" and math.isfinite(r["val_perplexity"])]


def pareto_front(rows: list[dict]) -> list[dict]:
    """Trials no other trial beats on both perplexity and parameter count."""
    done = sorted(_finished(rows), key=lambda r: (r["num_params"], r["val_perplexity"]))
    front, best = [], math.inf
    for r in done:
        if r["val_perplexity"] < best:
            front.append(r)
            best = r["val_perplexity"]
    return front


def shared_settings(base: TrainConfig) -> dict:
    """The settings every trial shared that best_hparams.json must carry to trainer.train: stateful, mixed
    precision, input dropout, the activation regularisers and weight averaging, where set."""
    flat = base.flat()
    return {k: flat[k] for k in ("stateful", "mixed_precision", *SHARED_REGULARISERS) if flat[k]}


def write_outputs(tuner_dir: str, rows: list[dict], fixed: dict | None = None) -> dict | None:
    """trials.csv, pareto.png and best_hparams.json (the best point, plus `fixed` settings every trial
    shared that trainer.train must repeat, e.g. stateful)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if rows:
        fields = list(rows[0])
        with atomic.replacing(os.path.join(tuner_dir, "trials.csv")) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    done = _finished(rows)
    front = pareto_front(rows)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.scatter([r["num_params"] for r in done], [r["val_perplexity"] for r in done], s=18, alpha=0.6,
               label="trials")
    ax.plot([r["num_params"] for r in front], [r["val_perplexity"] for r in front], "r-o", ms=5,
            label="Pareto front")
    for r in front:
        ax.annotate(f"{r['num_layers']}×{r['num_hiddens']} {r['cell']}", (r["num_params"], r["val_perplexity"]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))  # not 10^5
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("validation perplexity")
    ax.set_title(f"tuning {os.path.basename(os.path.abspath(tuner_dir))}: {len(done)} finished trials", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic.replacing(os.path.join(tuner_dir, "pareto.png"), ".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    if not done:
        return None
    best = min(done, key=lambda r: r["val_perplexity"])
    hparams = {**{k: best[k] for k in HPARAM_KEYS}, **(fixed or {})}
    atomic.write_text(os.path.join(tuner_dir, "best_hparams.json"), json.dumps(hparams, indent=2) + "\n")
    return {**hparams, "val_perplexity": best["val_perplexity"], "trial_id": best["trial_id"]}


def write_hparams_logs(tuner_dir: str, rows: list[dict]) -> None:
    """TensorBoard HParams dashboard: one run per finished trial."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    for r in _finished(rows):
        with tf.summary.create_file_writer(os.path.join(tuner_dir, "logs", f"trial_{r['trial_id']}")).as_default():
            hp_api.hparams({k: r[k] for k in HPARAM_KEYS if r.get(k) is not None}, trial_id=r["trial_id"])
            tf.summary.scalar(OBJECTIVE, r["val_perplexity"], step=int(r["epochs"] or 1))


def trial_line(trial_id: str, values: dict, logs: list[dict], extra: dict, objective: str = OBJECTIVE) -> str:
    """One line per finished trial (`--quiet`): its point in the space, its best score, its cost. `values` are
    KerasTuner's, where the rate is the chosen optimizer's own (sgd_lr, adam_lr: declare_hyperparameters)."""
    scores = [v for log in logs for v in log.get(objective, []) if math.isfinite(v)]
    optimizer = values.get("optimizer")
    lr = values.get("lr", values.get(f"{optimizer}_lr"))
    point = f"{values.get('num_layers')} × {values.get('num_hiddens')} {str(values.get('cell', '')).upper()}, " \
            f"{optimizer} lr {'the default' if lr is None else format(lr, '.3g')}, " \
            f"dropout {values.get('dropout', 0.0):.2f}, " \
            f"weight drop {values.get('weight_drop') or 0.0:.2f}"
    result = f"val perplexity {min(scores):.3f}" if scores else "no finite val perplexity"
    params = f"{extra['num_params']:,} parameters, " if extra.get("num_params") else ""
    return f"trial {trial_id}: {point} → {result} ({extra['epochs']} epochs, {params}{extra['wall_s']:.0f} s)"


def tune(data_dir: str, tuner_dir: str, cfg: TuneConfig, start_points: Sequence[dict] = ()) -> dict | None:
    """Runs (or resumes, or joins as a worker) the search; the chief/single process writes the outputs and
    returns the best point. start_points: points (best_hparams.json's keys) the first trials try, in order,
    before the oracle's own."""
    base, space, settings = cfg.base, cfg.space, cfg.search
    try:
        queued = [start_values(p, space) for p in start_points]
    except ValueError as err:
        raise UserError(f"start point: {err}") from None
    if base.optimiser.lr_schedule == "warmup_cosine":
        if settings.trial_minutes is None:
            raise UserError("--lr-schedule warmup_cosine anneals each trial over its --trial-minutes: set them")
        base = base.replace(time_limit_min=settings.trial_minutes)  # compiled with a plain rate the callback sets
    cli.quiet_tensorflow()
    from trainer.training import check_fits_in_memory, configure_cpu_threads, resolved_form

    configure_cpu_threads(base, resolved_form(base))
    from trainer.data import check_records, load_data_info

    info = load_data_info(data_dir)
    check_records(info)
    if base.run.batch_size > info.num_train:
        raise UserError(f"--batch-size {base.run.batch_size} is larger than the {info.num_train} training windows")
    largest = ArchitectureConfig(cell="lstm" if "lstm" in space.cells else space.cells[0],
                                 num_layers=space.max_layers, num_hiddens=space.max_hiddens)
    check_fits_in_memory(largest, info.vocab_size, "the search's largest point")
    paths.make_output_dir(tuner_dir, "--tuner-dir")
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    with contextlib.ExitStack() as held:
        if not is_worker():  # a chief or a lone search has the directory to itself; workers join the chief's
            held.enter_context(locks.exclusive(tuner_dir, "trainer.tune"))
            check_same_search(tuner_dir, cfg)
        return _search(tuner_dir, tuner_id, base, space, settings, info, queued)


def is_worker() -> bool:
    """A KerasTuner worker (KERASTUNER_TUNER_ID other than chief, with an oracle to ask)."""
    return os.environ.get("KERASTUNER_TUNER_ID", "chief") != "chief" and "KERASTUNER_ORACLE_IP" in os.environ


SEARCH_RECORD = "search.json"  # in the tuner dir: what the trials there were searched with


def check_same_search(tuner_dir: str, cfg: TuneConfig) -> None:
    """A tuner dir holds one search: resuming it with another oracle, space or objective would mix trials of
    two searches (and KerasTuner fails on another oracle's state), so it is refused; the first run records it."""
    from trainer.training import monitored

    path = os.path.join(tuner_dir, SEARCH_RECORD)
    record = {"tuner": cfg.search.tuner, "space": json.loads(json.dumps(dataclasses.asdict(cfg.space))),
              "objective": monitored(cfg.base)}
    if os.path.exists(path):
        before = cli.read_json(path, "the search's record")
        if before != record:
            changed = ", ".join(k for k in record if before.get(k) != record[k])
            raise UserError(f"{tuner_dir}: holds a search with another {changed}; resume it with the same "
                            f"settings, or use a new --tuner-dir")
    elif os.listdir(tuner_dir) and os.path.isdir(os.path.join(tuner_dir, "search")):
        raise UserError(f"{tuner_dir}: holds trials without a record of their search ({SEARCH_RECORD}); use a new "
                        f"--tuner-dir")
    else:
        atomic.write_text(path, json.dumps(record, indent=2) + "\n")


def _search(tuner_dir, tuner_id, base, space, settings, info, queued) -> dict | None:
    """The search itself, once the directory is ours (see tune)."""
    from trainer import callbacks as cb
    from trainer.optimizers import COSINE_FLOOR
    from trainer.training import (
        averaged_weights_callbacks,
        fit_data,
        fit_steps,
        lr_schedule_callbacks,
        monitored,
        stream_validation,
    )

    trial_minutes, time_budget_min, max_trials = settings.trial_minutes, settings.time_budget, settings.max_trials
    max_epochs, early_stopping = settings.max_epochs, settings.early_stopping
    train_ds, valid_ds, throughput, steps_per_epoch = fit_data(base, info)
    hypermodel = make_hypermodel(base, space, info.vocab_size, steps_per_epoch)
    objective = monitored(base)  # val_stream_perplexity for --stateful trials

    if max_trials is None and time_budget_min is not None:
        max_trials = 10**6  # the budget is the limit
    tuner = make_tuner(settings.tuner, hypermodel, tuner_dir, max_trials, max_epochs, settings.executions_per_trial,
                       base.run.seed, objective)
    compat.queue_start_points(tuner.oracle, queued)

    def record_trial(trial, run):
        """The stock run_trial (Hyperband's epochs/checkpoint hand-over included), plus a record of cost."""
        with open(os.path.join(tuner_dir, "runs.log"), "a") as log:
            log.write(f"{trial.trial_id} {tuner_id}\n")
        start = time.perf_counter()
        histories = run()  # builds the trial's model via hypermodel
        logs = [h.history for h in (histories if isinstance(histories, list) else [histories])
                if hasattr(h, "history")]
        speeds = [log["tokens_per_s"][-1] for log in logs if log.get("tokens_per_s")]
        extra = {"num_params": hypermodel.last_num_params, "wall_s": time.perf_counter() - start,
                 "tokens_per_s": sum(speeds) / len(speeds) if speeds else math.nan, "tuner_id": tuner_id,
                 "epochs": len(logs[0].get("loss", [])) if logs else None}
        atomic.write_text(os.path.join(tuner.get_trial_dir(trial.trial_id), "extra.json"), json.dumps(extra))
        if base.run.progress == "epoch":
            print(trial_line(trial.trial_id, trial.hyperparameters.values, logs, extra, objective), flush=True)
        return histories

    tuner.trial_recorder = record_trial
    averaged, trained = averaged_weights_callbacks(base)  # --ema: trials are scored on the average
    schedule = ([cb.CosineOverEachFit(COSINE_FLOOR, base.optimiser.warmup_steps, max_epochs * steps_per_epoch,
                                      60 * trial_minutes)] if base.optimiser.lr_schedule == "warmup_cosine"
                else lr_schedule_callbacks(base, steps_per_epoch))
    callbacks = [cb.DivergenceGuard.for_vocabulary(info.vocab_size), throughput, *averaged,
                 *([stream_validation(info)] if base.run.stateful else []), *trained, *schedule]
    if early_stopping:
        import keras

        callbacks.append(keras.callbacks.EarlyStopping(monitor=objective, mode="min", patience=early_stopping))
    if trial_minutes is not None:
        callbacks.append(cb.TimeLimit(60 * trial_minutes))
    if time_budget_min is not None:
        deadline = time.time() + 60 * time_budget_min
        limit_by_time(tuner.oracle, deadline)
        callbacks.append(cb.Deadline(deadline))  # a trial in flight ends at the deadline too
    tuner.search(train_ds, validation_data=valid_ds, epochs=max_epochs, **fit_steps(base, train_ds, valid_ds),
                 callbacks=callbacks, verbose=int(base.run.progress == "bar"), shuffle=False)  # epoch: trial_line only
    if is_worker():
        return None  # workers leave the outputs to the chief
    rows = _trial_rows(tuner, space, base, info.vocab_size)
    best = write_outputs(tuner_dir, rows, shared_settings(base))
    write_hparams_logs(tuner_dir, rows)
    return best



def read_start_point(path: str, space: SearchSpace) -> dict:
    """One --start-with file: a JSON object with best_hparams.json's keys, inside the search space."""
    point = cli.read_json(path, "a start point (best_hparams.json's keys)")
    try:
        start_values(point, space)
    except ValueError as err:
        raise UserError(f"--start-with {path}: {err}") from None
    return point
