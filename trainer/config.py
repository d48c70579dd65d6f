"""Frozen configurations: what a model is (ModelConfig) and how it is trained (TrainConfig)."""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

CELLS = ("gru", "lstm", "rnn", "scratch")
FORMS = ("stacked", "layers", "fused", "native")  # see trainer.model
WEIGHT_DROP_FORMS = ("fused", "native")  # the forms whose own code reads the recurrent kernels (trainer.model)
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "warmup_cosine")  # see trainer.optimizers


def _check_types(config) -> None:
    """TypeError naming the field when a value (e.g. from an --hparams JSON file) has the wrong type."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, hint = getattr(config, field.name), hints[field.name]
        allowed = typing.get_args(hint) or (hint,)
        if value is None and type(None) in allowed:
            continue
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        elif float in allowed:
            ok = isinstance(value, (int, float))
        else:
            ok = isinstance(value, tuple(t for t in allowed if isinstance(t, type)))
        if not ok:
            raise TypeError(f"{field.name} must be {' or '.join(getattr(t, '__name__', str(t)) for t in allowed)}, "
                            f"got {value!r}")


def _check_activation_regularisers(config) -> None:
    for name in ("ar", "tar"):
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """A deep RNN language model: one-hot tokens → L recurrent layers of h units → logits.

    dropout acts on every non-recurrent connection: between layers and before the logits. input_dropout drops
    whole characters of the input: per sequence, each token type is zeroed with that probability at every step
    (AWD-LSTM's embedding dropout; with one-hot inputs also its variational input dropout). weight_drop is
    DropConnect on the recurrent kernels (AWD-LSTM's weight drop: one mask per batch, shared by every row
    and step), in the forms that run the recurrence themselves (fused, native). ar and tar are AWD-LSTM's
    activation regularisers on the top layer's outputs (trainer.model.ActivationRegularization), every form."""

    vocab_size: int
    cell: str = "gru"
    num_layers: int = 2
    num_hiddens: int = 32
    dropout: float = 0.0
    form: str = "fused"
    weight_drop: float = 0.0
    input_dropout: float = 0.0
    ar: float = 0.0   # AR: ar · mean(h²) of the top layer's outputs added to the training loss
    tar: float = 0.0  # TAR: tar · mean((h_t − h_{t−1})²)

    def __post_init__(self):
        _check_activation_regularisers(self)
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        if self.form not in FORMS:
            raise ValueError(f"unknown form {self.form!r}; choose one of {', '.join(FORMS)}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.num_hiddens < 1:
            raise ValueError(f"num_hiddens must be >= 1, got {self.num_hiddens}")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.weight_drop < 1.0:
            raise ValueError(f"weight_drop must be in [0, 1), got {self.weight_drop}")
        if not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {self.input_dropout}")
        if self.weight_drop and self.form not in WEIGHT_DROP_FORMS:
            raise ValueError(f"weight drop masks the recurrent kernels inside the recurrence, which the "
                             f"{', '.join(WEIGHT_DROP_FORMS)} forms run themselves; not the {self.form!r} form "
                             f"(use --backend-form auto, fused or native)")

    def architecture(self) -> dict:
        """What checkpoints depend on (neither the form nor the regularisers: all forms share one weight layout)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("form", "dropout", "weight_drop", "input_dropout", "ar", "tar")}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """The book's deep GRU defaults: 2 × 32, batch 1024, SGD lr 2, clip 1, 100 epochs."""

    cell: str = "gru"
    num_layers: int = 2
    num_hiddens: int = 32
    dropout: float = 0.0
    weight_drop: float = 0.0     # DropConnect on the recurrent kernels (ModelConfig.weight_drop)
    input_dropout: float = 0.0   # whole input characters dropped per sequence (ModelConfig.input_dropout)
    ar: float = 0.0              # activation regularisation (ModelConfig.ar)
    tar: float = 0.0             # temporal activation regularisation (ModelConfig.tar)
    batch_size: int = 1024
    epochs: int = 100
    optimizer: str = "sgd"
    lr: float = 2.0
    clip_norm: float = 1.0
    seed: int = 0
    backend_form: str = "auto"   # auto | stacked | layers | fused | native
    distribute: str = "none"     # none | mirrored | multi_worker
    mixed_precision: bool = False
    verbose: int = 1  # 1: Keras progress bar, 2: one short line per epoch (callbacks.EpochLine), 0: silent
    time_limit_min: float | None = None  # stop after this many minutes (at a batch end), keeping the epochs run
    steps_per_execution: int = 1  # training steps per tf.function call (fewer Python round trips per epoch)
    # Batches per epoch; None is one pass over the training windows. Set it below a pass over windows made
    # with a small --stride and the data repeats: every epoch is a fresh sample of window offsets.
    steps_per_epoch: int | None = None
    reduce_lr_patience: int = 0  # halve lr after this many validations without a better val perplexity (0: never)
    # Validate (windows and streams) every this many epochs, and on each run's first epoch and the last one
    # (the last of --epochs, or the one a time limit or early stop ends); checkpoints keep the best validated
    # epoch. Keras fit()'s validation_freq (trainer.train only: a search's trials validate every epoch).
    validation_freq: int = 1
    weight_decay: float = 0.0    # AdamW's decoupled weight decay (optimizer adamw only)
    # constant | warmup_cosine (linear warm-up, cosine decay to lr / 10 at the last step or, with
    # time_limit_min, at the deadline if that comes first: callbacks.CosineToDeadline)
    lr_schedule: str = "constant"
    warmup_steps: int = 0        # warmup_cosine: steps of linear warm-up
    # Truncated BPTT: each source's training stream in batch_size contiguous lanes, read in order, the
    # state carried from batch to batch (reset at epoch start and at each source); see trainer.stateful.
    stateful: bool = False
    # Polyak averaging (AWD-LSTM's averaged SGD, as an exponential moving average): validation, the best
    # checkpoint and the export use the average of the trained weights with this momentum per step (0: off)
    ema: float = 0.0
    sample_prefix: str = "it has"
    sample_chars: int = 20

    def __post_init__(self):
        _check_types(self)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        for name in ("batch_size", "epochs", "steps_per_execution", "validation_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_steps and self.lr_schedule != "warmup_cosine":
            raise ValueError("warmup_steps needs lr_schedule warmup_cosine")
        if self.lr_schedule != "constant" and self.reduce_lr_patience:
            raise ValueError("reduce_lr_patience changes the rate itself; it cannot be combined with an lr schedule")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1) (0: off), got {self.ema}")
        if not 0.0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.weight_decay and self.optimizer != "adamw":
            raise ValueError(f"weight_decay needs optimizer adamw (got {self.optimizer})")
        if self.reduce_lr_patience < 0:
            raise ValueError(f"reduce_lr_patience must be >= 0, got {self.reduce_lr_patience}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.clip_norm < math.inf:
            raise ValueError(f"clip_norm must be >= 0 (0: no clipping), got {self.clip_norm}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2^32), got {self.seed}")
        if self.time_limit_min is not None and not 0 < self.time_limit_min < math.inf:
            raise ValueError(f"time_limit_min must be > 0, got {self.time_limit_min}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.weight_drop < 1.0:
            raise ValueError(f"weight_drop must be in [0, 1), got {self.weight_drop}")
        if not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {self.input_dropout}")
        _check_activation_regularisers(self)
        for name in ("num_layers", "num_hiddens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.backend_form not in ("auto",) + FORMS:
            raise ValueError(f"unknown backend form {self.backend_form!r}")
        if self.distribute not in ("none", "mirrored", "multi_worker"):
            raise ValueError(f"unknown distribution {self.distribute!r}")

    def hparams(self) -> dict:
        keys = ("cell", "num_layers", "num_hiddens", "dropout", "weight_drop", "input_dropout", "ar", "tar",
                "batch_size", "epochs", "optimizer", "lr", "clip_norm", "seed", "steps_per_epoch", "reduce_lr_patience",
                "weight_decay", "lr_schedule", "warmup_steps", "stateful", "ema", "validation_freq")
        return {k: getattr(self, k) for k in keys}

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ServingLimits:
    """What one request may ask of an exported model; enforced in the graph, so TF Serving enforces it too.

    Checked before anything is allocated from the request's numbers: a request over a limit is an
    InvalidArgument error, never an allocation of batch × num_chars (issue: one request crashed the server).
    """

    max_batch_size: int = 64        # rows (prefixes or texts) per request
    max_input_tokens: int = 20000   # tokens of one prefix or scored text
    max_chars: int = 1000           # num_chars of one row

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2**31 - 1:
                raise ValueError(f"{name} must be an integer in [1, 2^31 - 1], got {value!r}")


DEFAULT_LIMITS = ServingLimits()
