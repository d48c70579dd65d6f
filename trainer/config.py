"""Frozen configurations, each field declared once with its default and one line of help: what a model is
(ModelConfig, for the pure builders) and how it is trained (TrainConfig: sections shared by train and tune).
Command-line flags and YAML config files are derived from these classes (common.config)."""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Literal

CELLS = ("gru", "lstm", "rnn", "scratch")
FORMS = ("stacked", "layers", "fused", "native")  # see trainer.model
WEIGHT_DROP_FORMS = ("fused", "native")  # the forms whose own code reads the recurrent kernels (trainer.model)
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "warmup_cosine")  # see trainer.optimizers
DISTRIBUTIONS = ("none", "mirrored", "multi_worker")
PROGRESS = ("bar", "epoch", "none")
MAX_LAYERS = 64        # deeper stacks only add graph-building time here; the chapter's go to 4
MAX_HIDDENS = 1 << 16  # units per layer


def _check_types(config) -> None:
    """TypeError naming the field when a value (e.g. from an --hparams JSON file) has the wrong type."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, hint = getattr(config, field.name), hints[field.name]
        allowed = typing.get_args(hint) or (hint,)
        if value is None and type(None) in allowed:
            continue
        if typing.get_origin(hint) is Literal:
            if value not in allowed:
                raise ValueError(f"unknown {field.name} {value!r}; choose one of {', '.join(map(str, allowed))}")
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


def _check_rate(config, name: str) -> None:
    value = getattr(config, name)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


@dataclass(frozen=True, kw_only=True)
class ArchitectureConfig:
    """Model: the network's shape and how its layers run"""

    cell: Literal["gru", "lstm", "rnn", "scratch"] = "gru"
    """recurrent cell; scratch is the book's from-scratch tanh RNN cell"""
    num_layers: int = 2
    """stacked recurrent layers"""
    num_hiddens: int = 32
    """units per layer"""
    form: Literal["auto", "stacked", "layers", "fused", "native"] = "auto"
    """how the layers run (same maths, same weights); auto: the fastest bench.forms measured for this cell, width
    and device (flag also --backend-form)"""

    def __post_init__(self):
        _check_types(self)
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        if self.form not in ("auto",) + FORMS:
            raise ValueError(f"unknown form {self.form!r}; choose one of auto, {', '.join(FORMS)}")
        for name, most in (("num_layers", MAX_LAYERS), ("num_hiddens", MAX_HIDDENS)):
            if not 1 <= getattr(self, name) <= most:
                raise ValueError(f"{name} must be in [1, {most}], got {getattr(self, name)}")

    def num_params(self, vocab_size: int) -> int:
        """Weights of the network for this vocabulary: each layer's gates over [input, state] and biases, then
        the output layer."""
        gates = {"gru": 3, "lstm": 4}.get(self.cell, 1)
        h, total, width_in = self.num_hiddens, 0, vocab_size
        for _ in range(self.num_layers):
            total += gates * h * (width_in + h + 2)
            width_in = h
        return total + h * vocab_size + vocab_size


@dataclass(frozen=True, kw_only=True)
class RegularisersConfig:
    """Regularisers: what keeps the network from memorising its training text"""

    dropout: float = 0.0
    """dropout on every non-recurrent connection: between layers and before the logits"""
    weight_drop: float = 0.0
    """DropConnect on the recurrent kernels (AWD-LSTM's weight drop), one mask per batch; fused and native forms"""
    input_dropout: float = 0.0
    """whole input characters dropped: per sequence, each character type zeroed at every step with this
    probability (AWD-LSTM's embedding dropout)"""
    ar: float = 0.0
    """activation regularisation (AWD-LSTM's AR): ar · mean(h²) of the top layer's outputs added to the loss"""
    tar: float = 0.0
    """temporal activation regularisation (TAR): tar · mean((h_t − h_{t−1})²) of the top layer's outputs"""

    def __post_init__(self):
        _check_types(self)
        for name in ("dropout", "weight_drop", "input_dropout"):
            _check_rate(self, name)
        for name in ("ar", "tar"):
            value = getattr(self, name)
            if not 0.0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(ArchitectureConfig, RegularisersConfig):
    """A deep RNN language model: one-hot tokens → L recurrent layers of h units → logits; what the pure
    builders (trainer.model.build_model) take. Its form is resolved (never auto): the forms share one weight
    layout, so checkpoints depend on architecture() only."""

    vocab_size: int
    form: Literal["stacked", "layers", "fused", "native"] = "fused"

    def __post_init__(self):
        ArchitectureConfig.__post_init__(self)
        RegularisersConfig.__post_init__(self)
        if self.form not in FORMS:
            raise ValueError(f"unknown form {self.form!r}; choose one of {', '.join(FORMS)}")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if self.weight_drop and self.form not in WEIGHT_DROP_FORMS:
            raise ValueError(f"weight drop masks the recurrent kernels inside the recurrence, which the "
                             f"{', '.join(WEIGHT_DROP_FORMS)} forms run themselves; not the {self.form!r} form "
                             f"(use --backend-form auto, fused or native)")

    def architecture(self) -> dict:
        """What checkpoints depend on (neither the form nor the regularisers: all forms share one weight layout)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("form", *(f.name for f in dataclasses.fields(RegularisersConfig)))}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class OptimiserConfig:
    """Optimiser and schedule"""

    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    """the optimizer"""
    lr: float = 2.0
    """learning rate"""
    clip_norm: float = 1.0
    """clip the global gradient norm to this; 0 turns clipping off"""
    weight_decay: float = 0.0
    """decoupled weight decay (optimizer adamw only)"""
    lr_schedule: Literal["constant", "warmup_cosine"] = "constant"
    """constant, or warmup_steps of linear warm-up then cosine decay to lr / 10 at the last step (or at the time
    limit, if that comes first)"""
    warmup_steps: int = 0
    """warm-up steps of warmup_cosine"""
    reduce_lr_patience: int = 0
    """halve the rate after this many validations without a better validation perplexity (0: never)"""
    ema: float = 0.0
    """Polyak averaging: validate, checkpoint and export an exponential moving average of the weights with this
    momentum per step, e.g. 0.99 (0: off)"""

    def __post_init__(self):
        _check_types(self)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.clip_norm < math.inf:
            raise ValueError(f"clip_norm must be >= 0 (0: no clipping), got {self.clip_norm}")
        if not 0.0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.weight_decay and self.optimizer != "adamw":
            raise ValueError(f"weight_decay needs optimizer adamw (got {self.optimizer})")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_steps and self.lr_schedule != "warmup_cosine":
            raise ValueError("warmup_steps needs lr_schedule warmup_cosine")
        if self.reduce_lr_patience < 0:
            raise ValueError(f"reduce_lr_patience must be >= 0, got {self.reduce_lr_patience}")
        if self.lr_schedule != "constant" and self.reduce_lr_patience:
            raise ValueError("reduce_lr_patience changes the rate itself; it cannot be combined with an lr schedule")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1) (0: off), got {self.ema}")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Run: batches, length, precision, distribution, what is printed"""

    batch_size: int = 1024
    """windows per step"""
    epochs: int = 100
    """passes over the training windows (more epochs later resume the same run)"""
    seed: int = 0
    """seed for weights, dropout and data order"""
    steps_per_epoch: int | None = None
    """batches per epoch (default: one pass over the windows); the data repeats"""
    steps_per_execution: int = 1
    """training steps per compiled call (Keras compile's steps_per_execution)"""
    validation_freq: int = 1
    """validate (windows and streams) every this many epochs, and the first and the last; the best checkpoint is
    the best validated epoch"""
    stateful: bool = False
    """truncated backpropagation through time: each source's training text in batch_size contiguous lanes read in
    order, the state carried from batch to batch; checkpoints keep the best val_stream_perplexity"""
    mixed_precision: bool = False
    """bfloat16 on CPU, float16 on GPU, with the loss in float32"""
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"
    """tf.distribute strategy; multi_worker reads TF_CONFIG"""
    time_limit_min: float | None = None
    """stop training after this many minutes, keeping the epochs run (default: no limit)"""
    progress: Literal["bar", "epoch", "none"] = "bar"
    """what to print while training: Keras's progress bar, one short line per epoch, or nothing"""
    sample_prefix: str = "it has"
    """the prefix of the sample metrics.json records"""
    sample_chars: int = 20
    """characters the sample continues it by"""

    def __post_init__(self):
        _check_types(self)
        for name in ("batch_size", "epochs", "steps_per_execution", "validation_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2^32), got {self.seed}")
        if self.time_limit_min is not None and not 0 < self.time_limit_min < math.inf:
            raise ValueError(f"time_limit_min must be > 0, got {self.time_limit_min}")
        if self.distribute not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {self.distribute!r}")
        if self.progress not in PROGRESS:
            raise ValueError(f"unknown progress {self.progress!r}; choose one of {', '.join(PROGRESS)}")
        if not 1 <= self.sample_chars <= 100_000:
            raise ValueError(f"sample_chars must be in [1, 100000], got {self.sample_chars}")
        if not 1 <= len(self.sample_prefix) <= 10_000:
            raise ValueError(f"sample_prefix must be 1 to 10000 characters (the sample continues it), got "
                             f"{len(self.sample_prefix)}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How a model is trained: one section each for the architecture, the regularisers, the optimiser and the
    run. The book's deep GRU by default: 2 × 32, batch 1024, SGD lr 2, clip 1, 100 epochs."""

    model: ArchitectureConfig = dataclasses.field(default_factory=ArchitectureConfig)
    regularisers: RegularisersConfig = dataclasses.field(default_factory=RegularisersConfig)
    optimiser: OptimiserConfig = dataclasses.field(default_factory=OptimiserConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def __post_init__(self):
        for name, section in SECTIONS.items():
            if not isinstance(getattr(self, name), section):
                raise TypeError(f"{name} must be a {section.__name__}, got {getattr(self, name)!r}")

    @classmethod
    def from_flat(cls, **values) -> "TrainConfig":
        """From field names without their sections (best_hparams.json, --hparams files, tests)."""
        return cls().replace(**values)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with fields changed, by their plain names (each name lives in one section)."""
        unknown = sorted(set(changes) - set(FIELD_SECTION))
        if unknown:
            raise TypeError(f"unknown settings {', '.join(unknown)}")
        sections = {}
        for name in SECTIONS:
            mine = {k: v for k, v in changes.items() if FIELD_SECTION[k] == name}
            sections[name] = dataclasses.replace(getattr(self, name), **mine) if mine else getattr(self, name)
        return TrainConfig(**sections)

    def flat(self) -> dict:
        """Every field by its plain name."""
        return {k: v for name in SECTIONS for k, v in dataclasses.asdict(getattr(self, name)).items()}

    def hparams(self) -> dict:
        """What metrics.json and best_hparams.json record (flat names; not how the run printed or was placed)."""
        return {k: v for k, v in self.flat().items() if k in HPARAMS}

    def to_yaml(self) -> str:
        """The settings by section, as `--config` reads them."""
        import yaml

        return yaml.safe_dump({name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}, sort_keys=False)

    def model_config(self, vocab_size: int, form: str) -> ModelConfig:
        """The builder's config for this vocabulary and resolved form."""
        return ModelConfig(vocab_size=vocab_size, **{**dataclasses.asdict(self.model), "form": form},
                           **dataclasses.asdict(self.regularisers))


SECTIONS = {"model": ArchitectureConfig, "regularisers": RegularisersConfig, "optimiser": OptimiserConfig,
            "run": RunConfig}
FIELD_SECTION = {f.name: name for name, section in SECTIONS.items() for f in dataclasses.fields(section)}
# metrics.json's and best_hparams.json's keys: everything but how a run is placed and printed
HPARAMS = tuple(k for k in FIELD_SECTION if k not in ("form", "distribute", "mixed_precision", "time_limit_min",
                                                      "steps_per_execution", "progress", "sample_prefix",
                                                      "sample_chars"))


@dataclass(frozen=True)
class ServingLimits:
    """Limits: what one request may ask of an export, checked in its graph (so TF Serving enforces them too)
    before anything is allocated from the request's numbers"""

    max_batch_size: int = 64
    """most rows (prefixes or texts) in one request"""
    max_input_tokens: int = 20000
    """longest prefix or scored text, in tokens"""
    max_chars: int = 1000
    """largest num_chars a row may ask for"""

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2**31 - 1:
                raise ValueError(f"{name} must be an integer in [1, 2^31 - 1], got {value!r}")


DEFAULT_LIMITS = ServingLimits()
