"""Carried state: lanes, truncated BPTT, stream (full-context) evaluation, resume; AdamW, schedule, grad norm."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from tests.conftest import TINY_TRAIN, assert_user_error, run_cli


def test_lanes_are_contiguous_and_cover_the_stream_once():
    from trainer.data import lanes, stateful_batches

    stream = np.arange(1000, dtype=np.int32)
    lane = lanes(stream, batch_size=7, num_steps=10)                   # lane_len = 999 // 7 // 10 * 10 = 140
    assert lane.shape == (7, 141)
    assert all((np.diff(row) == 1).all() for row in lane)               # each lane is one contiguous stretch
    assert (lane[1:, 0] == lane[:-1, -1]).all()                         # lane b ends where lane b + 1 starts
    ids, targets, reset = stateful_batches([stream, stream[:300] + 5000], batch_size=7, num_steps=10)
    assert ids.shape == (14 + 4, 7, 10) and reset.tolist() == [1] + [0] * 13 + [1, 0, 0, 0]
    assert (targets[:, :, :-1] == ids[:, :, 1:]).all()
    # batch k + 1 continues batch k row by row, and each target of the used stream appears exactly once
    assert (ids[1:14, :, 0] == ids[:13, :, -1] + 1).all()
    first = targets[:14].transpose(1, 0, 2).reshape(-1)
    assert sorted(first.tolist()) == list(range(1, 7 * 140 + 1))


def test_too_short_a_source_for_the_lanes_is_one_line():
    from common.cli import UserError
    from trainer.data import stateful_batches

    with pytest.raises(UserError, match="need 1601 tokens"):
        stateful_batches([np.arange(100)], batch_size=100, num_steps=16)


def test_streams_rebuilt_from_windows_of_any_stride(tiny_data, tmp_path):
    from pipeline import transform
    from pipeline.preprocessing import preprocess
    from trainer.data import load_data_info, read_windows, split_streams

    info = load_data_info(str(tiny_data))
    stream = split_streams(info, "train")[0]
    windows = read_windows(info.train_files, info.num_steps)
    assert len(stream) == (len(windows) - 1) * 16 + 17
    assert all((stream[k * 16:k * 16 + 17] == w).all() for k, w in enumerate(windows))
    other = tmp_path / "data"
    preprocess(["timemachine"], str(other), transform.PreprocessConfig(num_steps=8, stride=3))
    info3 = load_data_info(str(other))
    for split in ("train", "valid"):
        a, b = split_streams(info, split)[0], split_streams(info3, split)[0]
        n = min(len(a), len(b))
        assert n > 1000 and (a[:n] == b[:n]).all()


def _forms():
    return [("gru", "fused"), ("lstm", "fused"), ("gru", "stacked"), ("lstm", "layers"), ("gru", "native"),
            ("lstm", "native")]


@pytest.mark.parametrize("cell,form", _forms())
def test_carried_state_after_batch_k_equals_one_run_over_batches_1_to_k(cell, form):
    import keras
    import tensorflow as tf

    from trainer.config import ModelConfig
    from trainer.model import build_model
    from trainer.stateful import CarriedStateModel

    cfg = ModelConfig(vocab_size=13, cell=cell, num_layers=2, num_hiddens=6, form=form)
    keras.utils.set_random_seed(3)
    model = CarriedStateModel(build_model(cfg, carry_state=True), rows=4)
    ids = np.random.default_rng(0).integers(0, 13, (4, 15)).astype(np.int32)
    logits = []
    for k, start in enumerate(range(0, 15, 5)):
        batch = {"ids": tf.constant(ids[:, start:start + 5]), "reset": tf.constant([float(k == 0)] * 4)}
        logits.append(model(batch, training=True).numpy())
    zeros = [tf.zeros((4, 6))] * len(model.carried)
    whole, *final = model.core([tf.constant(ids), *zeros])
    np.testing.assert_allclose(np.concatenate(logits, axis=1), whole.numpy(), atol=2e-5)
    for carried, expected in zip(model.carried, final):
        np.testing.assert_allclose(carried.numpy(), expected.numpy(), atol=2e-5)
    # reset: the next batch starts from zero again, exactly as a fresh sequence
    again = model({"ids": tf.constant(ids[:, :5]), "reset": tf.ones(4)}, training=True).numpy()
    np.testing.assert_allclose(again, logits[0], atol=2e-5)
    # windows (plain ids) never read or move the carried state
    before = [v.numpy() for v in model.carried]
    np.testing.assert_allclose(model(tf.constant(ids[:, :5])).numpy(), logits[0], atol=2e-5)
    assert all((v.numpy() == b).all() for v, b in zip(model.carried, before))


def test_stream_scorer_chunks_do_not_change_the_result():
    import keras

    from trainer.config import ModelConfig
    from trainer.model import build_model
    from trainer.stateful import StreamScorer

    keras.utils.set_random_seed(0)
    core = build_model(ModelConfig(vocab_size=9, cell="lstm", num_layers=2, num_hiddens=5), carry_state=True)
    rng = np.random.default_rng(1)
    streams = [rng.integers(0, 9, 101), rng.integers(0, 9, 37)]
    whole = StreamScorer(core, chunk=1000).losses(streams)
    chunked = StreamScorer(core, chunk=7).losses(streams)
    assert [n for _, n in whole] == [100, 36]
    np.testing.assert_allclose([x for x, _ in chunked], [x for x, _ in whole], rtol=1e-5)
    alone = StreamScorer(core, chunk=16).losses(streams[1:])          # padding rows change nothing
    np.testing.assert_allclose(alone[0][0], whole[1][0], rtol=1e-5)
    # per token (what an ensemble averages): token i + 1's loss given tokens 0..i, as one run of the stream gives it
    per_token = StreamScorer(core, chunk=7).token_losses(streams)
    assert [len(t) for t in per_token] == [100, 36]
    for stream, losses in zip(streams, per_token):
        zeros = [np.zeros((1, int(spec.shape[-1])), np.float32) for spec in core.inputs[1:]]
        logits = np.asarray(core([np.asarray(stream[None, :-1], np.int32), *zeros])[0])[0]   # [T, V]
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))                     # log-softmax
        np.testing.assert_allclose(losses, -log_probs[np.arange(len(stream) - 1), stream[1:]], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["fused", "stacked", "layers"])
def test_streams_are_scored_by_the_native_kernels_with_any_forms_weights(form):
    """Stream scoring runs one row token after token: on a CPU it must take the native kernels (a silent
    fall-back to the graph forms costs ~10× per epoch), with the trained form's weights, same numbers."""
    import keras

    from trainer import native
    from trainer.config import ModelConfig
    from trainer.model import build_model, function_op_types, model_form
    from trainer.stateful import StreamScorer, carried_network

    assert native.available()[0], native.available()[1]
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(vocab_size=9, cell="gru", num_layers=2, num_hiddens=5, form=form)
    trained = build_model(cfg)
    scorer_core = carried_network(cfg, weights_from=trained)
    scorer = StreamScorer(scorer_core, chunk=64)
    op_types = set(function_op_types(scorer._run.get_concrete_function()))
    assert model_form(scorer_core) == "native" and native.OP_TYPES["gru"] in op_types
    streams = [np.random.default_rng(2).integers(0, 9, 300)]
    own_form = StreamScorer(build_model(cfg, carry_state=True), chunk=64)
    own_form.core.set_weights(trained.get_weights())
    np.testing.assert_allclose(scorer.losses(streams)[0][0], own_form.losses(streams)[0][0], rtol=1e-5)


def test_export_score_with_carried_state_equals_the_stream_metric(trained, exported, tiny_data):
    """The SavedModel's score signature, in the session loader TF Serving uses, over the whole validation
    stream as one text, gives the trainer's val_stream_perplexity of the exported (best) epoch."""
    from serving.servable import Servable
    from trainer.data import load_data_info, split_streams

    info = load_data_info(str(tiny_data))
    stream = split_streams(info, "valid")[0]
    assert 0 not in stream.tolist()  # no <unk>: the text re-tokenizes to the same ids
    text = "".join(info.vocab[i] for i in stream)
    servable = Servable(str(exported / "deep_rnn" / "1"), 1)
    try:
        out = servable.predict("score", {"text": np.array([text.encode()])})
    finally:
        servable.close()
    metrics = trained[1]
    assert int(out["num_tokens"][0]) == len(stream) - 1
    assert float(out["perplexity"][0]) == pytest.approx(metrics["best_val_stream_ppl"], rel=1e-4)
    history = list(csv.DictReader(open(trained[0] / "history.csv")))
    assert "val_stream_perplexity" in history[0] and "grad_norm" in history[0]


@pytest.mark.slow
@pytest.mark.parametrize("ema", [0.0, 0.9], ids=["trained", "averaged"])
def test_stateful_resume_continues_the_same_lanes(tiny_data, tmp_path, ema):
    """Two epochs in one run, or one epoch, a stop, and a resumed second: the same history. With --ema the
    backup written as the first run ends holds the trained weights (not the average Keras leaves in the model
    then), so the resumed run trains on from where the straight run was."""
    from trainer.config import TrainConfig
    from trainer.training import train_and_evaluate

    cfg = TrainConfig.from_flat(**{**TINY_TRAIN, "batch_size": 32}, stateful=True, ema=ema)
    straight = train_and_evaluate(cfg, str(tiny_data), str(tmp_path / "a"))
    train_and_evaluate(cfg.replace(epochs=1), str(tiny_data), str(tmp_path / "b"))
    resumed = train_and_evaluate(cfg, str(tiny_data), str(tmp_path / "b"))
    rows = [list(csv.DictReader(open(tmp_path / d / "history.csv"))) for d in ("a", "b")]
    assert len(rows[0]) == len(rows[1]) == 2
    for key in ("perplexity", "val_perplexity", "val_stream_perplexity"):
        assert float(rows[1][1][key]) == pytest.approx(float(rows[0][1][key]), rel=1e-4), key
    assert resumed["selected_by"] == "val_stream_perplexity"
    assert resumed["best_val_stream_ppl"] == pytest.approx(straight["best_val_stream_ppl"], rel=1e-4)
    # what is saved is the plain network: it loads and scores without any carried-state machinery
    run = json.loads((tmp_path / "b" / "run_config.json").read_text())
    assert run["train"]["stateful"] is True and (tmp_path / "b" / "model.keras").exists()


@pytest.mark.parametrize("form", ["stacked", "auto"])
def test_stateful_training_under_mixed_precision_keeps_the_state_in_float32(tiny_data, tmp_path, form):
    """--stateful --mixed-precision trains (it once failed on its first batch: the carried float32 state was
    read in bfloat16 and multiplied by a float32 reset mask) and ends where float32 training ends; the
    carried state stays float32, never rounded to bfloat16 between batches."""
    import keras

    from trainer.config import ModelConfig, TrainConfig
    from trainer.model import build_model
    from trainer.stateful import CarriedStateModel
    from trainer.training import train_and_evaluate

    runs = {}
    for mixed in (False, True):
        cfg = TrainConfig.from_flat(**{**TINY_TRAIN, "batch_size": 32}, stateful=True, form=form, mixed_precision=mixed)
        runs[mixed] = train_and_evaluate(cfg, str(tiny_data), str(tmp_path / f"mixed{mixed}"))
    assert math.isfinite(runs[True]["best_val_stream_ppl"])
    assert abs(runs[True]["best_val_stream_ppl"] / runs[False]["best_val_stream_ppl"] - 1) < 0.05
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = CarriedStateModel(build_model(ModelConfig(vocab_size=13, num_hiddens=6, form="stacked"),
                                              carry_state=True), rows=2)
        model({"ids": np.ones((2, 5), np.int32), "reset": np.ones(2, np.float32)}, training=True)
        assert all(v.dtype == "float32" and v.numpy().any() for v in model.carried)
        assert all(np.isfinite(v.numpy()).all() for v in model.carried)
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.slow
def test_adamw_with_warmup_cosine_trains_and_logs_the_gradient_norm(tiny_data, tmp_path):
    from trainer.config import TrainConfig
    from trainer.optimizers import COSINE_FLOOR
    from trainer.training import train_and_evaluate

    cfg = TrainConfig.from_flat(**{**TINY_TRAIN, "epochs": 3}, optimizer="adamw", lr=0.01, weight_decay=0.01,
                      lr_schedule="warmup_cosine", warmup_steps=20, dropout=0.1, stateful=True)
    metrics = train_and_evaluate(cfg, str(tiny_data), str(tmp_path / "m"))
    history = list(csv.DictReader(open(tmp_path / "m" / "history.csv")))
    rates = [float(r["learning_rate"]) for r in history]
    assert rates[0] < 0.01 and rates[-1] == pytest.approx(0.01 * COSINE_FLOOR, rel=1e-3) and rates[1] > rates[2]
    assert all(float(r["grad_norm"]) > 0 for r in history) and math.isfinite(metrics["grad_norm"])
    assert metrics["best_val_stream_ppl"] < 20


def test_cosine_to_deadline_follows_the_budget_used_up_first():
    from trainer.callbacks import CosineToDeadline

    schedule = CosineToDeadline(peak=1.0, floor=0.1, warmup_steps=10, total_steps=110, start=100.0, deadline=200.0)
    assert schedule.rate(0, 100.0) == pytest.approx(0.1) and schedule.rate(9, 100.0) == pytest.approx(1.0)
    assert schedule.rate(10, 100.0) == pytest.approx(1.0)              # warm-up done, no budget used
    assert schedule.rate(60, 100.0) == pytest.approx(0.55)             # half the steps: halfway down the cosine
    assert schedule.rate(10, 150.0) == pytest.approx(0.55)             # half the time, few steps: the same
    assert schedule.rate(35, 175.0) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(0.75 * math.pi)))
    assert schedule.rate(20, 500.0) == pytest.approx(0.1) and schedule.rate(500, 120.0) == pytest.approx(0.1)


@pytest.mark.slow
def test_warmup_cosine_under_a_time_limit_anneals_by_the_deadline(tiny_data, tmp_path):
    """Epochs to spare, 7 seconds: the rate ends near its floor when the clock stops the run, not at lr."""
    from trainer.config import TrainConfig
    from trainer.optimizers import COSINE_FLOOR
    from trainer.training import train_and_evaluate

    cfg = TrainConfig.from_flat(**{**TINY_TRAIN, "epochs": 100000}, optimizer="adam", lr=0.01,
                                lr_schedule="warmup_cosine",
                      warmup_steps=5, time_limit_min=0.12)
    train_and_evaluate(cfg, str(tiny_data), str(tmp_path / "m"))
    rates = [float(r["learning_rate"]) for r in csv.DictReader(open(tmp_path / "m" / "history.csv"))]
    assert len(rates) >= 3 and rates == sorted(rates, reverse=True)
    assert rates[0] > 2 * rates[-1] and rates[-1] < 1.5 * COSINE_FLOOR * 0.01


def test_bad_optimizer_combinations_exit_2(tiny_data, tmp_path):
    proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "m"),
                   "--weight-decay", "0.1")
    assert_user_error(proc, "weight_decay needs optimizer adamw")
    proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "m"),
                   "--lr-schedule", "warmup_cosine", "--reduce-lr-patience", "2")
    assert_user_error(proc, "cannot be combined with an lr schedule")


def test_evaluate_full_context_equals_the_stream_metric_from_model_dir_and_export(trained, exported, tiny_data,
                                                                                   tmp_path):
    from deep_rnn.evaluation import evaluate
    from trainer.data import load_data_info, split_streams

    info = load_data_info(str(tiny_data))
    text = tmp_path / "valid.txt"
    text.write_text("".join(info.vocab[i] for i in split_streams(info, "valid")[0]))
    expected = trained[1]["best_val_stream_ppl"]
    for where in ({"model_dir": str(trained[0])}, {"export": str(exported / "deep_rnn")}):
        rows = evaluate([str(text)], full_context=True, **where)
        assert rows[0]["perplexity"] == pytest.approx(expected, rel=1e-4), where
        assert rows[0]["scored_tokens"] == rows[0]["tokens"] - 1
