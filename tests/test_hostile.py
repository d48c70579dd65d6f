"""Hostile inputs: every stage's bad flags and bad files, malformed and oversized requests, concurrent runs,
kills. Each CLI case checks exit code 2 with one line and no traceback, and that nothing outside the stage's
own output changed; the server cases check that it keeps serving and that its memory stays bounded."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2

from common import locks
from common.net import free_port
from serving.grpc_client import Client
from tests.conftest import ROOT, TINY_TRAIN, assert_user_error, run_cli

pytestmark = pytest.mark.reliability


def snapshot(directory: Path) -> dict[str, str]:
    """path → sha256 of every file under directory (links and special files by their kind)."""
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif not path.is_dir():
            out[str(path.relative_to(directory))] = "special"
    return out


@pytest.fixture
def sandbox(tmp_path, timemachine_text):
    """A user's project folder: a corpus, notes, a subfolder; its snapshot is compared after each case."""
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "tm.txt").write_text(timemachine_text[:60000])
    (tmp_path / "books" / "NOTES.md").write_text("my notes\n")
    (tmp_path / "afile").write_text("not a directory\n")
    return tmp_path


# ---- 1. data loss: preprocess never deletes what it did not write ----
@pytest.mark.parametrize("output", ["books", ".", "books/tm.txt", "NOTEMPTY"])
def test_preprocess_output_that_holds_or_lies_in_an_input_or_foreign_files_is_refused(sandbox, output):
    (sandbox / "NOTEMPTY").mkdir()
    (sandbox / "NOTEMPTY" / "keep.txt").write_text("someone else's file\n")
    before = snapshot(sandbox)
    proc = run_cli("pipeline.preprocess", "--corpus", str(sandbox / "books" / "tm.txt"), "--output",
                   str(sandbox / output), "--num-steps", "8")
    assert_user_error(proc)
    assert snapshot(sandbox) == before
    assert (sandbox / "books" / "tm.txt").exists() and (sandbox / "books" / "NOTES.md").exists()


def test_preprocess_cwd_output_dot_keeps_the_working_directory(sandbox):
    before = snapshot(sandbox)
    proc = subprocess.run([sys.executable, "-m", "pipeline.preprocess", "--corpus", "books/tm.txt", "--output", "."],
                          cwd=sandbox, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert_user_error(proc, "holds the input")
    assert snapshot(sandbox) == before


def test_preprocess_replaces_its_own_output(sandbox):
    out = sandbox / "data"
    for _ in range(2):
        proc = run_cli("pipeline.preprocess", "--corpus", str(sandbox / "books" / "tm.txt"), "--output", str(out),
                       "--num-steps", "8")
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "metadata.json").exists()


# ---- 9/11. bad flags and bad files, one line and exit 2, nothing else touched ----
def _preprocess_cases(sandbox: Path):
    fifo = sandbox / "fifo.txt"
    os.mkfifo(fifo)
    tm = str(sandbox / "books" / "tm.txt")
    base = ["--output", str(sandbox / "out"), "--num-steps", "8"]
    return {
        "output under a file": (["--corpus", tm, "--output", str(sandbox / "afile" / "x")], "afile"),
        "output in /proc": (["--corpus", tm, "--output", "/proc/deep_rnn/x"], "--output"),
        "huge num-steps": (["--corpus", tm, *base, "--num-steps", str(10**30)], "num-steps"),
        "unknown runner": (["--corpus", tm, *base, "--runner=NoSuchRunner"], "NoSuchRunner"),
        "max-tokens 1": (["--corpus", tm, *base, "--max-tokens", "1"], "max-tokens"),
        "fifo corpus": (["--corpus", str(fifo), *base], "not a regular file"),
        "dev zero": (["--corpus", "/dev/zero", *base], "not a regular file"),
        "same file by path and glob": (["--corpus", tm, str(sandbox / "books" / "t*.txt"), *base], "named twice"),
    }


@pytest.mark.parametrize("case", ["output under a file", "output in /proc", "huge num-steps", "unknown runner",
                                  "max-tokens 1", "fifo corpus", "dev zero", "same file by path and glob"])
def test_preprocess_bad_inputs(sandbox, case):
    args, needle = _preprocess_cases(sandbox)[case]
    before = snapshot(sandbox)
    proc = run_cli("pipeline.preprocess", *args, timeout=120)
    assert_user_error(proc, needle)
    assert snapshot(sandbox) == before


def _damage(data: Path, what: str) -> None:
    if what == "truncated record":
        shard = sorted(data.glob("train-*.tfrecord"))[0]
        shard.write_bytes(shard.read_bytes()[:-7])
    elif what == "corrupted record":
        shard = sorted(data.glob("train-*.tfrecord"))[0]
        raw = bytearray(shard.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        shard.write_bytes(bytes(raw))
    elif what == "metadata not json":
        (data / "metadata.json").write_text("{not json")
    elif what == "metadata a list":
        (data / "metadata.json").write_text("[1, 2]")
    elif what == "metadata without windows":
        meta = json.loads((data / "metadata.json").read_text())
        del meta["windows"]
        (data / "metadata.json").write_text(json.dumps(meta))
    elif what == "vocab not a vocabulary":
        (data / "vocab.txt").write_text("a\nb\n")


@pytest.mark.parametrize("what", ["truncated record", "corrupted record", "metadata not json", "metadata a list",
                                  "metadata without windows", "vocab not a vocabulary"])
def test_train_and_tune_refuse_damaged_data(tiny_data, tmp_path, what):
    """Every damage is a UserError from both libraries before any work; one of them, through both commands, is
    one line and exit 2 (the commands turn any UserError into that)."""
    from common.cli import UserError
    from trainer.config import TrainConfig
    from trainer.search import TuneConfig, tune
    from trainer.training import train_and_evaluate

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    _damage(data, what)
    with pytest.raises(UserError):
        train_and_evaluate(TrainConfig.from_flat(epochs=1, num_hiddens=8, batch_size=256), str(data),
                           str(tmp_path / "model"))
    with pytest.raises(UserError):
        tune(str(data), str(tmp_path / "tuning"), TuneConfig())
    assert not (tmp_path / "tuning" / "best_hparams.json").exists()
    assert not (tmp_path / "model" / "history.csv").exists()
    if what != "truncated record":
        return
    proc = run_cli("trainer.train", "--data", str(data), "--model-dir", str(tmp_path / "model"), "--epochs", "1",
                   "--num-hiddens", "8", "--batch-size", "256", "--quiet")
    assert_user_error(proc, "damaged TFRecord file")
    proc = run_cli("trainer.tune", "--data", str(data), "--tuner-dir", str(tmp_path / "tuning"), "--max-trials", "1",
                   "--max-epochs", "1", "--max-layers", "1", "--max-hiddens", "64", "--batch-size", "256", "--quiet")
    assert_user_error(proc, "damaged TFRecord file")


@pytest.mark.parametrize("content, needle", [("[1, 2]", "JSON object"), ("null", "JSON object"),
                                             ('{"num_layers": "2"}', "num_layers"), ('{"lr": true}', "lr"),
                                             ('{"dropout": [0.1]}', "dropout"), ('{"epochs": 2.5}', "epochs"),
                                             ('{"sample_prefix": ""}', "sample_prefix")])
def test_train_bad_hparams_files(tiny_data, tmp_path, content, needle):
    hparams = tmp_path / "h.json"
    hparams.write_text(content)
    proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "m"), "--hparams",
                   str(hparams))
    assert_user_error(proc, needle)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("flags, needle", [(["--seed", "-1"], "seed"), (["--clip-norm", "-1"], "clip_norm"),
                                           (["--time-limit-min", "-1"], "time_limit_min"),
                                           (["--lr", "nan"], "lr")])
def test_train_bad_numbers(tiny_data, tmp_path, flags, needle):
    proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "m"), *flags)
    assert_user_error(proc, needle)


def test_train_model_dir_that_is_a_file_and_damaged_run_config(tiny_data, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(afile), "--epochs", "1")
    assert_user_error(proc, "not a directory")
    model = tmp_path / "model"
    model.mkdir()
    (model / "run_config.json").write_text("{broken")
    proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(model), "--epochs", "1")
    assert_user_error(proc, "run_config.json")


# ---- 5. resume across changed flags, and two runs in one model dir ----
def test_resume_with_a_changed_flag_keeps_the_model_dir_usable(tiny_data, tmp_path):
    from trainer.config import TrainConfig
    from trainer.training import read_history, train_and_evaluate

    model = tmp_path / "model"
    base = {**TINY_TRAIN, "num_hiddens": 8}
    train_and_evaluate(TrainConfig.from_flat(**{**base, "epochs": 2}), str(tiny_data), str(model))
    train_and_evaluate(TrainConfig.from_flat(**{**base, "epochs": 3, "reduce_lr_patience": 1}), str(tiny_data),
                       str(model))
    metrics = train_and_evaluate(TrainConfig.from_flat(**{**base, "epochs": 4}), str(tiny_data), str(model))
    history = read_history(str(model / "history.csv"))
    assert [int(r["epoch"]) for r in history] == [0, 1, 2, 3] and metrics["epochs"] == 4
    assert all(0 < r["loss"] < 10 and r["learning_rate"] > 0 for r in history)  # no lr in the loss column
    lines = (model / "history.csv").read_text().splitlines()
    assert sum(line.startswith("epoch") for line in lines) == 1


def test_second_trainer_in_the_same_model_dir_is_refused(tiny_data, tmp_path):
    model = tmp_path / "model"
    with locks.exclusive(str(model), "trainer.train"):
        proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(model), "--epochs", "1")
    assert_user_error(proc, "already running")
    assert not (model / "history.csv").exists()


# ---- 7/8. export: plain model names, one export at a time per base ----
@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "-x", ""])
def test_export_model_names_must_be_plain(trained, tmp_path, name):
    before = snapshot(tmp_path)
    proc = run_cli("serving.export", "--model-dir", str(trained[0]), "--export-base", str(tmp_path / "export"),
                   "--model-name", name)
    assert_user_error(proc, "--model-name")
    assert snapshot(tmp_path) == before and not (tmp_path / "export").exists()


def test_export_base_locked_and_bad_dirs(trained, tmp_path):
    base = tmp_path / "export"
    with locks.exclusive(str(base / "deep_rnn"), "serving.export"):
        proc = run_cli("serving.export", "--model-dir", str(trained[0]), "--export-base", str(base))
    assert_user_error(proc, "already running")
    assert not list((base / "deep_rnn").glob("[0-9]*"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_user_error(run_cli("serving.export", "--model-dir", str(afile), "--export-base", str(base)),
                      "not a directory")
    assert_user_error(run_cli("serving.export", "--model-dir", str(trained[0]), "--export-base", str(afile)),
                      "not a directory")


def test_run_all_refuses_a_run_dir_in_use(tmp_path):
    with locks.exclusive(str(tmp_path / "run"), "deep_rnn.run_all"):
        proc = run_cli("deep_rnn.run_all", "--run-dir", str(tmp_path / "run"), "--epochs", "1")
    assert_user_error(proc, "already running")


def test_run_all_dies_with_its_parent(tmp_path):
    """SIGKILL of `make` must not leave run_all and its stage running on as orphans."""
    parent = subprocess.Popen(
        ["bash", "-c", f"{sys.executable} -m deep_rnn.run_all --run-dir {tmp_path / 'run'} --epochs 1000 "
                       f"--corpus timemachine > /dev/null 2>&1 & echo $!; wait"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    run_all = int(parent.stdout.readline())
    deadline = time.time() + 120
    children = []
    while time.time() < deadline and not children:
        children = subprocess.run(["pgrep", "-P", str(run_all)], capture_output=True, text=True).stdout.split()
        time.sleep(0.3)
    assert children, "run_all started no stage"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    alive = [int(run_all)] + [int(c) for c in children]
    while time.time() < deadline and alive:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(0.3)
    assert not alive, f"orphans still running: {alive}"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# ---- 6. the pipeline reports only on the server it started ----
def test_serve_and_query_refuses_a_port_something_else_listens_on(exported, tmp_path):
    from common.cli import UserError
    from deep_rnn.orchestrate import serve_and_query
    from deep_rnn.run_all import parse_args

    run_dir = tmp_path / "run"
    shutil.copytree(exported, run_dir / "export")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} is in use"):
            serve_and_query(parse_args(["--grpc-port", str(port), "--rest-port", "0"]), str(run_dir))


# ---- server flags ----
@pytest.mark.parametrize("flags, needle", [(["--port", "-5"], "not a TCP port"), (["--port", "70000"],
                                                                                  "not a TCP port"),
                                           (["--rest-port", "70000"], "not a TCP port"),
                                           (["--host", "no.such.host.invalid"], "cannot bind"),
                                           (["--poll-seconds", "0"], "poll-seconds"),
                                           (["--rest-idle-seconds", "nan"], "rest-idle-seconds"),
                                           (["--rest-idle-seconds", "inf"], "rest-idle-seconds"),
                                           (["--rest-max-connections", "0"], "rest-max-connections")])
def test_server_bad_flags(exported, flags, needle):
    proc = run_cli("serving.server", "--model-base", str(exported / "deep_rnn"), "--rest-port", "0", "--port", "0",
                   *flags, timeout=120)
    assert_user_error(proc, needle)


def test_server_grpc_port_in_use(exported):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        proc = run_cli("serving.server", "--model-base", str(exported / "deep_rnn"), "--port", str(port),
                       "--rest-port", "-1", timeout=120)
    assert_user_error(proc, "cannot bind gRPC")


def test_client_out_of_range_numbers():
    proc = run_cli("serving.client", "--server", "127.0.0.1:1", "--prefix", "it", "--num-chars", "99999999999")
    assert_user_error(proc, "--num-chars")


# ---- 2/3/4/10. the server under hostile requests: no crash, bounded memory ----
def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def server_process(exported, tmp_path_factory):
    """The stand-in as its own process (so its memory can be read), with a copy of the export."""
    base = tmp_path_factory.mktemp("hostile-serve")
    shutil.copytree(exported / "deep_rnn", base / "deep_rnn")
    grpc_port, rest_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving.server", "--model-base", str(base / "deep_rnn"),
                             "--port", str(grpc_port), "--rest-port", str(rest_port), "--poll-seconds", "0.2"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    Client(f"127.0.0.1:{grpc_port}").wait_until_ready(120, proc)
    yield proc, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}", base
    proc.terminate()
    proc.wait(timeout=30)


def _post(url: str, data: bytes, headers=None) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_hostile_requests_leave_the_server_up_with_bounded_memory(server_process):
    proc, address, rest_url, _ = server_process
    client = Client(address)
    client.generate(["it has"], 20)
    start_rss = _rss_mb(proc.pid)

    def shape_only(dtype, dims, **values):
        t = tensor_pb2.TensorProto(dtype=dtype, **values)
        for d in dims:
            t.tensor_shape.dim.add(size=d)
        return t

    hostile = []
    for signature in ("serving_default", "sample"):
        extra = {"temperature": 1.0, "top_k": 0, "seed": 0} if signature == "sample" else {}
        for n in (2**31 - 1, 10**9):
            hostile.append(client.request(signature, prefix=["it has"], num_chars=n, **extra))
    strings = client.request("serving_default", prefix=["x"], num_chars=1)
    strings.inputs["prefix"].CopyFrom(shape_only(types_pb2.DT_STRING, [1000000], string_val=[b"it has"]))
    ints = client.request("serving_default", prefix=["x"], num_chars=1)
    ints.inputs["num_chars"].CopyFrom(shape_only(types_pb2.DT_INT32, [10**8], int_val=[1]))
    broadcast = client.request("serving_default", prefix=["x"], num_chars=1)
    broadcast.inputs["prefix"].CopyFrom(shape_only(types_pb2.DT_STRING, [3], string_val=[b"a"]))
    wide = client.request("serving_default", prefix=["it has"] * 10000, num_chars=1)
    hostile += [strings, ints, broadcast, wide]
    for req in hostile:
        with pytest.raises(grpc.RpcError) as err:
            client.stub.Predict(req, timeout=120)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    predict_url = f"{rest_url}/v1/models/deep_rnn:predict"
    many = json.dumps({"inputs": {"prefix": ["ab"] * 120000, "num_chars": 1}}).encode()
    assert len(many) < 4 << 20 and _post(predict_url, many) == 400
    for body in ({"inputs": {"prefix": ["a"], "num_chars": 2**31 - 1}},
                 {"signature_name": {"a": 1}, "inputs": {}}, {"signature_name": ["score"], "inputs": {}}):
        assert _post(predict_url, json.dumps(body).encode()) == 400
    assert _post(predict_url, b"[" * 200000) == 400
    assert _post(f"{rest_url}/v1/models/deep_rnn/versions/{'9' * 5000}:predict", b"{}") == 400
    assert proc.poll() is None
    assert client.generate(["it has"], 20)
    growth = _rss_mb(proc.pid) - start_rss
    assert growth < 300, f"server memory grew by {growth:.0f} MB"


def test_a_broken_version_is_not_retried_until_its_files_change(server_process):
    """A truncated variables file: the load fails once, is remembered, memory stays flat, serving goes on."""
    proc, address, _, base = server_process
    broken = base / "deep_rnn" / "9"
    shutil.copytree(base / "deep_rnn" / "1", base / "deep_rnn" / ".tmp-9")
    variables = next((base / "deep_rnn" / ".tmp-9" / "variables").glob("variables.data-*"))
    variables.write_bytes(variables.read_bytes()[:100])
    (base / "deep_rnn" / ".tmp-9").rename(broken)
    client = Client(address)
    time.sleep(3)
    start_rss = _rss_mb(proc.pid)
    time.sleep(8)  # 40 polls at 0.2 s: a retry per poll would show here
    assert _rss_mb(proc.pid) - start_rss < 40
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "deep_rnn"
    states = {s.version: (s.state, s.status.error_message) for s in model_service_pb2_grpc.ModelServiceStub(
        grpc.insecure_channel(address)).GetModelStatus(req, timeout=30).model_version_status}
    assert states[9][0] == get_model_status_pb2.ModelVersionStatus.END and states[9][1]
    assert states[1][0] == get_model_status_pb2.ModelVersionStatus.AVAILABLE  # still serving the good one
    assert client.served_version() == 1
    good = next((base / "deep_rnn" / "1" / "variables").glob("variables.data-*"))
    shutil.copy(good, broken / "variables" / good.name)  # the files change: the version is tried again
    deadline = time.time() + 60
    while time.time() < deadline and client.served_version() != 9:
        time.sleep(0.5)
    assert client.served_version() == 9


def test_a_vocabulary_too_large_for_a_model_is_refused(sandbox, monkeypatch):
    """A word vocabulary past MAX_VOCAB (2^21 ids) is a one-line error; shown with the limit lowered to 50."""
    from common.cli import UserError
    from pipeline import transform
    from pipeline.preprocessing import preprocess

    monkeypatch.setattr(transform, "MAX_VOCAB", 50)
    with pytest.raises(UserError, match="more than the 50"):
        preprocess([str(sandbox / "books" / "tm.txt")], str(sandbox / "out"),
                   transform.PreprocessConfig(tokenizer="word", num_steps=4))
    assert not (sandbox / "out").exists()


@pytest.mark.parametrize("damage", ["run_config.json", "vocab.txt", "model.keras"])
def test_export_refuses_a_damaged_model_dir(trained, tmp_path, damage):
    model = tmp_path / "model"
    shutil.copytree(trained[0], model)
    (model / damage).write_text("{damaged")
    proc = run_cli("serving.export", "--model-dir", str(model), "--export-base", str(tmp_path / "export"))
    assert_user_error(proc, damage)
    assert not list((tmp_path / "export").glob("*/[0-9]*"))
