"""Evaluation as a library: perplexity, bits per token and unknown-token share of a trained model or an
export on any texts, per source, read as the preprocessing stage reads a corpus."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from common import cli
from common import text as text_lib
from common import vocab as vocab_lib
from common.cli import UserError
from pipeline import sources, transform

OVERALL = "overall"


@dataclass(frozen=True)
class ModelSpec:
    """What the evaluation needs to know of a model: its units, its vocabulary and its window length."""

    normalize: str
    tokenizer: str
    num_steps: int
    vocab: tuple[str, ...]


@dataclass(frozen=True)
class SourceText:
    """One source, read and tokenized: its facts, tokens ([n] strings) and ids ([n] int32)."""

    source: str
    facts: dict
    tokens: list[str]
    ids: np.ndarray


def read_sources(corpus: Sequence[str], spec: ModelSpec, cfg: transform.PreprocessConfig) -> list[SourceText]:
    """Every source decoded, stripped, normalised and tokenized as pipeline.preprocess would."""
    encoder = text_lib.Encoder(list(spec.vocab), spec.tokenizer)
    out = []
    for path in sources.resolve_sources(list(corpus)):
        chunks, facts = [], {}
        try:
            for kind, value in transform.read_document(path, cfg, _open):
                if kind == "chunk":
                    chunks.append(value)
                else:
                    facts = value
        except transform.CorpusError as err:
            raise UserError(str(err)) from None
        normalised = "".join(chunks)
        tokens = text_lib.tokenize(normalised, spec.tokenizer)
        if len(tokens) < spec.num_steps + 1:
            raise UserError(f"{path}: {len(tokens)} tokens after normalisation, fewer than one window of "
                            f"{spec.num_steps + 1} (the model's num_steps + 1)")
        out.append(SourceText(path, facts, tokens, encoder.encode(normalised)))
    return out


def _open(path: str):
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.open(path)
    return open(path, "rb")


def window_starts(num_tokens: int, num_steps: int) -> range:
    """Start of each window: num_steps + 1 tokens, every num_steps tokens (the holdout split's windows)."""
    return range(0, transform.window_count(num_tokens, num_steps, num_steps) * num_steps, num_steps)


def keras_scorer(model, num_steps: int, batch_size: int) -> Callable[[SourceText], tuple[float, int]]:
    import tensorflow as tf

    from trainer.metrics import token_cross_entropy

    @tf.function(reduce_retracing=True)
    def batch_loss(windows):  # windows [B, T + 1] int32
        return tf.reduce_sum(token_cross_entropy(windows[:, 1:], model(windows[:, :-1], training=False)))

    def score(src: SourceText) -> tuple[float, int]:
        windows = transform.windows(src.ids, num_steps, num_steps)  # [m, T + 1]
        total = 0.0
        for start in range(0, len(windows), batch_size):
            total += float(batch_loss(tf.constant(np.ascontiguousarray(windows[start:start + batch_size]))))
        return total, len(windows) * num_steps

    return score


def keras_stream_scorer(model, model_config: dict) -> Callable[[SourceText], tuple[float, int]]:
    """Scores each source as one stream, the state carried across it (trainer.stateful.StreamScorer)."""
    from trainer.config import ModelConfig
    from trainer.stateful import StreamScorer, carried_network

    scorer = StreamScorer(carried_network(ModelConfig(**model_config), weights_from=model))
    return lambda src: scorer.losses([src.ids])[0]


def export_stream_scorer(servable, spec: ModelSpec, max_tokens: int) -> Callable[[SourceText], tuple[float, int]]:
    """Scores each source as one text through the `score` signature (state carried across the request)."""
    separator = "" if spec.tokenizer == "char" else " "

    def score(src: SourceText) -> tuple[float, int]:
        if len(src.tokens) > max_tokens:
            raise UserError(f"{src.source}: {len(src.tokens):,} tokens, more than the export's max_input_tokens "
                            f"{max_tokens:,}; score it with --model-dir, or export with a larger "
                            f"--max-input-tokens")
        out = servable.predict("score", {"text": np.array([separator.join(src.tokens).encode()], dtype=object)})
        return -float(out["log_likelihood"][0]), int(out["num_tokens"][0])

    return score


def export_scorer(servable, spec: ModelSpec, batch_size: int) -> Callable[[SourceText], tuple[float, int]]:
    """Scores each window as one text through the `score` signature: the window's tokens joined back
    into text, which the graph normalises (a no-op on normalised text) and tokenizes again."""
    separator = "" if spec.tokenizer == "char" else " "

    def score(src: SourceText) -> tuple[float, int]:
        texts = [separator.join(src.tokens[s:s + spec.num_steps + 1]).encode()
                 for s in window_starts(len(src.tokens), spec.num_steps)]
        total, count = 0.0, 0
        for start in range(0, len(texts), batch_size):
            out = servable.predict("score", {"text": np.array(texts[start:start + batch_size], dtype=object)})
            total -= float(np.sum(out["log_likelihood"].astype(np.float64)))
            count += int(np.sum(out["num_tokens"]))
        return total, count

    return score


def evaluate_sources(texts: list[SourceText], score: Callable[[SourceText], tuple[float, int]]) -> list[dict]:
    """Rows per source, then the overall row (token-weighted over all scored tokens)."""
    counts = []  # per source: (characters, tokens, unknown tokens, nats, scored tokens)
    for src in texts:
        counts.append((src.facts.get("chars", 0), len(src.ids), int(np.count_nonzero(src.ids == 0)), *score(src)))
    rows = [_row(src.source, *c, encoding=src.facts.get("encoding"), boilerplate=src.facts.get("boilerplate"))
            for src, c in zip(texts, counts)]
    return rows + [_row(OVERALL, *(sum(column) for column in zip(*counts)))]


def _row(source: str, chars: int, tokens: int, unknown: int, nats: float, scored: int, **extra) -> dict:
    mean = nats / scored
    return {"source": source, "characters": chars, "tokens": tokens, "scored_tokens": scored,
            "unknown_rate": unknown / tokens if tokens else 0.0, "perplexity": math.exp(mean),
            "bits_per_token": mean / math.log(2.0), **{k: v for k, v in extra.items() if v is not None}}


def model_dir_spec(model_dir: str):
    """(ModelSpec, keras model, its ModelConfig as a dict) of a finished training run."""
    from serving.savedmodel import load_trained

    model, vocab, run_config = load_trained(model_dir)
    return ModelSpec(run_config["normalize"], run_config["tokenizer"], int(run_config["num_steps"]),
                     tuple(vocab)), model, run_config["model"]


def export_version_dir(path: str) -> str:
    """A version directory: DIR itself when it holds saved_model.pb, else DIR's newest integer version."""
    from serving.layout import version_path, versions

    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    found = versions(path)
    if not found:
        raise UserError(f"--export {path}: no saved_model.pb there nor in a numbered version below it")
    return version_path(path, found[-1])


def export_spec(version_dir: str) -> tuple[ModelSpec, dict]:
    """(ModelSpec, serving limits) from the export's assets.extra (the trainer's run_config and vocabulary)."""
    from serving.layout import LIMITS_FILE

    extra = os.path.join(version_dir, "assets.extra")
    try:
        with open(os.path.join(extra, "run_config.json")) as f:
            run_config = json.load(f)
        vocab = vocab_lib.read_vocab(os.path.join(extra, "vocab.txt"))
        with open(os.path.join(version_dir, LIMITS_FILE)) as f:
            limits = json.load(f)
        spec = ModelSpec(run_config["normalize"], run_config["tokenizer"], int(run_config["num_steps"]),
                         tuple(vocab))
        if spec.num_steps + 1 > int(limits["max_input_tokens"]):
            raise UserError(f"--export {version_dir}: windows of {spec.num_steps + 1} tokens exceed its "
                            f"max_input_tokens {limits['max_input_tokens']}")
        return spec, {key: int(limits[key]) for key in ("max_batch_size", "max_input_tokens")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"--export {version_dir}: assets.extra is incomplete ({type(err).__name__}: {err}); "
                        "export it again with serving.export") from None


def evaluate(corpus: Sequence[str], model_dir: str | None = None, export: str | None = None,
             encoding: str = "auto", decode_errors: str = "strict", strip_boilerplate: str = "auto",
             batch_size: int = 256, full_context: bool = False) -> list[dict]:
    """The whole stage: one row per source and an overall row (see evaluate_sources)."""
    if (model_dir is None) == (export is None):
        raise UserError("give exactly one of --model-dir and --export")
    cli.quiet_tensorflow()
    if export:
        version_dir = export_version_dir(export)
        spec, limits = export_spec(version_dir)
    else:
        spec, model, model_config = model_dir_spec(model_dir)
    try:
        cfg = transform.PreprocessConfig(normalize=spec.normalize, tokenizer=spec.tokenizer, num_steps=spec.num_steps,
                                         encoding=encoding, decode_errors=decode_errors,
                                         strip_boilerplate=strip_boilerplate)
    except ValueError as err:
        raise UserError(str(err)) from None
    texts = read_sources(corpus, spec, cfg)
    if not export:
        scorer = (keras_stream_scorer(model, model_config) if full_context
                  else keras_scorer(model, spec.num_steps, batch_size))
        return evaluate_sources(texts, scorer)
    from serving.layout import version_number
    from serving.servable import Servable

    servable = Servable(version_dir, version_number(os.path.basename(os.path.normpath(version_dir))) or 0)
    try:
        scorer = (export_stream_scorer(servable, spec, limits["max_input_tokens"]) if full_context
                  else export_scorer(servable, spec, min(batch_size, limits["max_batch_size"])))
        return evaluate_sources(texts, scorer)
    finally:
        servable.close()


def format_table(rows: list[dict]) -> str:
    width = max(len(r["source"]) for r in rows)
    lines = [f"{'source':<{width}}  {'characters':>11}  {'tokens':>11}  {'unknown':>8}  {'perplexity':>10}  "
             f"{'bits/token':>10}"]
    for r in rows:
        lines.append(f"{r['source']:<{width}}  {r['characters']:>11,}  {r['tokens']:>11,}  "
                     f"{100 * r['unknown_rate']:>7.2f}%  {r['perplexity']:>10.3f}  {r['bits_per_token']:>10.3f}")
    return "\n".join(lines)
