"""Exports are proven by the loader TF Serving uses: the session-based SavedModelBundle, run by tensor names."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from common.cli import UserError
from serving import layout, savedmodel
from serving.grpc_client import predict_request


def _requests(export_dir: str) -> list:
    """Every warm-up record plus requests for every signature in both per-row and shared forms."""
    more = [predict_request("deep_rnn", "serving_default", prefix=["it has", "the time machine", "x"],
                            num_chars=[0, 7, 30]),
            predict_request("sample", "sample", prefix=["it has", "it has"], num_chars=12,
                            temperature=[0.7, 1.3], top_k=[3, 0], seed=[5, 6]),
            predict_request("deep_rnn", "score", text=["the time traveller", "it has been long"])]
    return layout.read_warmup(export_dir) + more


def test_every_signature_and_warmup_record_runs_in_the_session_loader_as_in_tf2(exported):
    path = str(exported / "deep_rnn" / "1")
    requests = _requests(path)
    assert {r.model_spec.signature_name for r in requests} == set(savedmodel.SIGNATURES)
    assert len(layout.read_warmup(path)) >= 5
    in_session = savedmodel.run_in_session_loader(path, requests)
    in_tf2 = savedmodel.run_in_tf2_loader(path, requests)
    for req, a, b in zip(requests, in_session, in_tf2):
        assert set(a) == set(b), req.model_spec.signature_name
        for key in a:
            if a[key].dtype.kind == "f":
                np.testing.assert_allclose(a[key], b[key], rtol=1e-6)
            else:
                np.testing.assert_array_equal(a[key], b[key])


def test_per_row_inputs_match_single_rows(exported):
    """Row b of a batch with per-row num_chars/temperature/top_k/seed equals the same row sent alone."""
    path = str(exported / "deep_rnn" / "1")
    batch = predict_request("m", "sample", prefix=["it has", "the"], num_chars=[15, 4], temperature=[0.8, 1.5],
                            top_k=[3, 0], seed=[11, 12])
    alone = [predict_request("m", "sample", prefix=["it has"], num_chars=15, temperature=0.8, top_k=3, seed=11),
             predict_request("m", "sample", prefix=["the"], num_chars=4, temperature=1.5, top_k=0, seed=12)]
    got = savedmodel.run_in_session_loader(path, [batch] + alone)
    assert list(got[0]["text"]) == [got[1]["text"][0], got[2]["text"][0]]
    assert len(got[0]["text"][1].decode()) == len("the") + 4


def test_saved_model_cli_runs_every_signature(exported):
    path = str(exported / "deep_rnn" / "1")
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "run", "--dir", path, "--tag_set", "serve"]
    cases = {"serving_default": "prefix=['it has'];num_chars=20",
             "sample": "prefix=['it has'];num_chars=[20];temperature=1.0;top_k=0;seed=[1]",
             "score": "text=['it has been a long time']"}
    expected = savedmodel.run_in_tf2_loader(path, [
        predict_request("m", "serving_default", prefix=["it has"], num_chars=20),
        predict_request("m", "sample", prefix=["it has"], num_chars=[20], temperature=1.0, top_k=0, seed=[1]),
        predict_request("m", "score", text=["it has been a long time"])])
    for (signature, inputs), want in zip(cases.items(), expected):
        proc = subprocess.run(cli + ["--signature_def", signature, "--input_exprs", inputs],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        key = "text" if "text" in want else "num_tokens"
        value = want[key][0]
        assert (repr(value) if isinstance(value, bytes) else str(value)) in proc.stdout, proc.stdout


def test_export_refuses_a_version_the_session_loader_cannot_run(trained, tmp_path, monkeypatch):
    """The Keras 3 wiring this export used to have: tracking Keras variables exports restore-only copies."""
    import trainer.generate

    monkeypatch.setattr(trainer.generate, "backend_variable", lambda variable: variable)
    with pytest.raises(UserError, match="session loader"):
        savedmodel.export_model(str(trained[0]), str(tmp_path), "deep_rnn")
    model_base = tmp_path / "deep_rnn"
    assert not [d for d in os.listdir(model_base) if not d.startswith(".")], "a refused version was published"
    assert layout.versions(str(model_base)) == []


def test_limits_are_enforced_inside_the_graph(trained, tmp_path):
    """TF Serving runs the graph, so the limits must be in it: batch, prefix length and num_chars."""
    from trainer.config import ServingLimits

    path = savedmodel.export_model(str(trained[0]), str(tmp_path), "deep_rnn",
                               limits=ServingLimits(max_batch_size=2, max_input_tokens=50, max_chars=30))
    signatures = tf.saved_model.load(path).signatures
    ok = signatures["serving_default"](prefix=tf.constant(["a", "b"]), num_chars=tf.constant(30))
    assert ok["text"].shape == [2]
    for prefix, num_chars, needle in ((["a"] * 3, 1, "batch must be <= 2"), (["x" * 51], 1, "longer than 50"),
                                      (["a"], 31, "num_chars must be <= 30"), (["a"], 2**31 - 1, "num_chars")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=needle):
            signatures["serving_default"](prefix=tf.constant(prefix), num_chars=tf.constant(num_chars))
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch must be <= 2"):
        signatures["score"](text=tf.constant(["it has", "it has", "it has"]))
    limits = (tmp_path / "deep_rnn" / "1" / layout.LIMITS_FILE).read_text()
    assert '"max_chars": 30' in limits
