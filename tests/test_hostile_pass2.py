"""Hostile pass 2: each case a promise that an earlier version broke (the item number in the comment is the
pass's list). CLI cases check exit code 2, one line on stderr and no traceback, and that nothing the project
did not write changed."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from common import atomic, locks, net
from tests.conftest import ROOT, assert_user_error, run_cli
from tests.test_hostile import snapshot

pytestmark = pytest.mark.reliability


def run_all(*args: str, timeout: float = 120):
    return run_cli("deep_rnn.run_all", *args, timeout=timeout)


# ---- 1. back-to-back runs on fixed ports ----
def test_a_port_left_in_time_wait_by_a_stopped_server_counts_as_free():
    """The first run's server leaves TIME-WAIT sockets behind; a second run on the same port must not call the
    port busy (the check binds with SO_REUSEADDR, as servers do). A listener still counts."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    assert not net.port_is_free(port)
    accepted.close()  # the server side closes first: its end of the connection goes to TIME-WAIT
    client.close()
    listener.close()
    time.sleep(0.2)
    assert net.port_is_free(port)


def test_a_listener_that_shares_ports_is_found_and_is_not_ours():
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    try:
        assert not net.port_is_free(port)
        assert net.listens_on(os.getpid(), port)
        assert not net.listens_on(1, port)  # init does not hold our socket
    finally:
        squatter.close()


# ---- 2. the user's folders beside an output ----
@pytest.mark.parametrize("output_exists", [False, True])
def test_preprocess_never_touches_the_users_folders_beside_its_output(tmp_path, output_exists):
    source = tmp_path / "corpus.txt"
    source.write_text("the time traveller smiled " * 400)
    out = tmp_path / "data"
    mine = {}
    for name in ("data.tmp-notes", "data.old-backup", "data.old-2023-backup", "data.tmp-1-abcdef12"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text(f"{name} is mine")
        mine[name] = snapshot(tmp_path / name)
    if output_exists:
        proc = run_cli("pipeline.preprocess", "--corpus", str(source), "--output", str(out), "--num-steps", "8")
        assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli("pipeline.preprocess", "--corpus", str(source), "--output", str(out), "--num-steps", "8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name, files in mine.items():
        assert snapshot(tmp_path / name) == files, name
    assert (out / "metadata.json").exists()


def test_clean_stale_removes_only_its_own_leftovers(tmp_path):
    final = tmp_path / "data"
    ours = tmp_path / f"data.tmp-{2**22 + 17}-0123abcd"  # a pid no process has here
    ours.mkdir()
    (ours / atomic.MARKER).write_text("x")
    set_aside = tmp_path / "data.old-89abcdef"
    set_aside.mkdir()
    (set_aside / atomic.MARKER).write_text("x")
    (set_aside / "metadata.json").write_text("{}")
    look_alike = tmp_path / "data.old-fedcba98"  # our name, but not our marker: the user's
    look_alike.mkdir()
    (look_alike / "notes.txt").write_text("mine")
    atomic.clean_stale(str(final))
    assert not ours.exists()
    assert (final / "metadata.json").exists() and not set_aside.exists()  # the crash's set-aside output is back
    assert (look_alike / "notes.txt").read_text() == "mine"


# ---- 3. a stage running by hand in RUN_DIR ----
def test_the_pipeline_refuses_while_a_trainer_holds_the_model_directory(tmp_path):
    run = tmp_path / "run"
    model = run / "model"
    model.mkdir(parents=True)
    (run / ".deep_rnn-run").write_text("deep_rnn.run_all\n")
    (model / "fingerprint").write_text("another run's")
    (model / "model.keras").write_bytes(b"weights in training")
    with locks.exclusive(str(model), "trainer.train"):
        before = snapshot(model)
        proc = run_all("--run-dir", str(run), "--num-hiddens", "24", "--grpc-port", "0", "--rest-port", "0")
    assert_user_error(proc, "trainer.train is already running there", f"pid {os.getpid()}")
    assert snapshot(model) == before


# ---- 4. a foreign server's answers reported as ours ----
def test_the_pipeline_refuses_a_port_another_listener_holds(tmp_path):
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        from common.cli import UserError
        from deep_rnn.orchestrate import serve_and_query
        from deep_rnn.run_all import parse_args

        with pytest.raises(UserError, match=f"port {port} is in use"):
            serve_and_query(parse_args(["--grpc-port", str(port), "--rest-port", "0"]), str(tmp_path))


# ---- 5. version folders ----
def test_version_folders_follow_tf_servings_rule(tmp_path):
    from serving.layout import version_dirs, version_path, versions

    for name in ("00000123", "7", "100000000000000000000", "²", "٣", "12a", ".staging", "-1", "9223372036854775807"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    (tmp_path / "8").mkdir()  # no SavedModel yet: a version being written
    assert versions(str(tmp_path)) == [7, 123, 2**63 - 1]
    assert version_path(str(tmp_path), 123) == str(tmp_path / "00000123")
    assert version_dirs(str(tmp_path / "missing")) == {}


def test_export_with_stray_folders_in_the_model_base(trained, tmp_path):
    base = tmp_path / "export"
    for name in ("²", "100000000000000000000"):
        (base / "deep_rnn" / name).mkdir(parents=True)
        (base / "deep_rnn" / name / "saved_model.pb").write_bytes(b"")
    from serving.savedmodel import export_model

    export_model(str(trained[0]), str(base))
    assert (base / "deep_rnn" / "1" / "saved_model.pb").exists()
    assert_user_error(run_cli("serving.export", "--model-dir", str(trained[0]), "--export-base", str(base),
                              "--version", "100000000000000000000"), "version")


# ---- 6. sizes checked before reading or allocating ----
def test_huge_or_endless_inputs_are_refused_before_they_are_read(tiny_data, trained, tmp_path):
    started = time.monotonic()
    assert_user_error(run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "m"),
                              "--hparams", "/dev/zero"), "/dev/zero")
    assert_user_error(run_cli("trainer.tune", "--data", str(tiny_data), "--tuner-dir", str(tmp_path / "t"),
                              "--start-with", "/dev/zero"), "/dev/zero")
    model = tmp_path / "model"
    shutil.copytree(trained[0], model)
    (model / "model.keras").unlink()
    (model / "model.keras").symlink_to("/dev/zero")
    assert_user_error(run_cli("serving.export", "--model-dir", str(model), "--export-base", str(tmp_path / "e")),
                      "not a regular file")
    assert_user_error(run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "m2"),
                              "--num-layers", "100000"), "num_layers must be in [1, 64]")
    assert_user_error(run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "m3"),
                              "--num-layers", "64", "--num-hiddens", "65536"), "GiB")
    assert time.monotonic() - started < 120


# ---- 6, 11. a full disk, and outputs where nothing can be written ----
def _can_mount_in_a_namespace() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not _can_mount_in_a_namespace(),
                                  reason="needs unshare to mount a small tmpfs in a private mount namespace")


def on_small_filesystem(mountpoint, options: str, module: str, *args: str):
    """`python -m module args` with a fresh tmpfs (mount options) over mountpoint, seen by that process only."""
    mountpoint.mkdir(exist_ok=True)
    script = f'mount -t tmpfs -o {options} tmpfs "$0" && exec "$@"'
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, str(mountpoint), sys.executable, "-m", module, *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


@needs_mounts
def test_training_onto_a_full_disk_fails_in_one_line_not_a_crash(tiny_data, tmp_path):
    """HDF5 under h5py dies with SIGSEGV on ENOSPC; the checkpoint's room is checked before writing."""
    full = tmp_path / "full"
    proc = on_small_filesystem(full, "size=1m", "trainer.train", "--data", str(tiny_data), "--model-dir",
                               str(full / "model"), "--num-layers", "2", "--num-hiddens", "64", "--epochs", "2",
                               "--progress", "none")
    assert_user_error(proc, "no space left on device", "MiB free")


@needs_mounts
def test_preprocessing_onto_a_full_disk_fails_in_one_line(tmp_path):
    full = tmp_path / "full"
    proc = on_small_filesystem(full, "size=200k", "pipeline.preprocess", "--corpus", "timemachine", "--output",
                               str(full / "data"), "--num-steps", "16")
    assert_user_error(proc, "--output", "no space left on device")


@needs_mounts
def test_an_output_on_a_read_only_filesystem_is_named_in_one_line(trained, tmp_path):
    readonly = tmp_path / "ro"
    proc = on_small_filesystem(readonly, "ro", "serving.export", "--model-dir", str(trained[0]),
                               "--export-base", str(readonly / "export"))
    assert_user_error(proc, "Read-only file system")


@pytest.mark.parametrize("place", ["under_a_file", "in_proc", "a_file"])
def test_each_stage_names_an_output_directory_it_cannot_make(tiny_data, trained, tmp_path, place):
    from common.cli import UserError
    from deep_rnn.orchestrate import run_pipeline
    from deep_rnn.run_all import parse_args
    from serving.savedmodel import export_model
    from trainer.config import TrainConfig
    from trainer.search import TuneConfig, tune
    from trainer.training import train_and_evaluate

    (tmp_path / "file").write_text("the user's")
    path = {"under_a_file": str(tmp_path / "file" / "out"), "in_proc": "/proc/deep_rnn/out",
            "a_file": str(tmp_path / "file")}[place]
    calls = {"--model-dir": lambda: train_and_evaluate(TrainConfig.from_flat(epochs=1), str(tiny_data), path),
             "--export-base": lambda: export_model(str(trained[0]), path),
             "--tuner-dir": lambda: tune(str(tiny_data), path, TuneConfig()),
             "RUN_DIR": lambda: run_pipeline(parse_args(["--run-dir", path]))}
    for flag, call in calls.items():
        with pytest.raises(UserError, match=r"(cannot create it|exists and is not a directory)") as raised:
            call()
        assert path in str(raised.value) and "\n" not in str(raised.value)
    assert (tmp_path / "file").read_text() == "the user's"


# ---- 11. shards that are not this run's records ----
def _shard_of(data, windows) -> None:
    """Replaces data's first train shard with `windows` ([n, T+1] ids) as TFRecords."""
    import tensorflow as tf

    shard = sorted(data.glob("train-*.tfrecord"))[0]
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for window in windows:
            feature = {"tokens": tf.train.Feature(int64_list=tf.train.Int64List(value=window))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


@pytest.mark.parametrize("damage, needle", [
    (lambda data, vocab, steps: _shard_of(data, [[vocab + 3] * (steps + 1)] * 4), "outside the vocabulary of"),
    (lambda data, vocab, steps: _shard_of(data, [[-1] * (steps + 1)] * 4), "outside the vocabulary of"),
    (lambda data, vocab, steps: _shard_of(data, [[1] * (steps + 5)] * 4), "says num_steps"),
    (lambda data, vocab, steps: (data / "train-00009-00010.tfrecord").mkdir(), "not a file"),
], ids=["id above", "negative id", "another num_steps", "a directory"])
@pytest.mark.parametrize("form", ["stacked", "layers", "fused", "native"])
def test_records_that_do_not_fit_the_vocabulary_or_windows_are_refused(tiny_data, tmp_path, damage, needle, form):
    """Before any training, in every form: an id beyond the embedding otherwise fails mid-epoch (or reads
    zeros in a one-hot); windows of another length fail inside tf.data."""
    from common.cli import UserError
    from trainer.config import TrainConfig
    from trainer.search import TuneConfig, tune
    from trainer.training import train_and_evaluate

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    meta = json.loads((data / "metadata.json").read_text())
    damage(data, meta["vocab_size"], meta["num_steps"])
    with pytest.raises(UserError, match=needle):
        train_and_evaluate(TrainConfig.from_flat(form=form, epochs=1), str(data), str(tmp_path / "model"))
    with pytest.raises(UserError, match=needle):
        tune(str(data), str(tmp_path / "tuning"), TuneConfig())
    assert not (tmp_path / "model" / "history.csv").exists()


# ---- 11. each bad input the pass found: one line, exit 2 ----
@pytest.mark.parametrize("module, args, needle", [
    ("pipeline.preprocess", ["--corpus", "{tmp}/utf16.txt", "--encoding", "utf-16"], "does not start with BOM"),
    ("pipeline.preprocess", ["--corpus", "{tmp}/utf16.txt", "--encoding", "rot13"], "not a text encoding"),
    ("pipeline.preprocess", ["--corpus", "{tmp}/utf16.txt", "--encoding", "base64"], "not a text encoding"),
    ("pipeline.preprocess", ["--corpus", "{tmp}/utf16.txt", "--encoding", "zlib_codec"], "not a text encoding"),
    ("pipeline.preprocess", ["--config", "{tmp}/corpus5.yaml"], "corpus must be a list"),
    ("trainer.train", ["--hparams", "{tmp}/deep.json"], "deep.json"),
    ("trainer.train", ["--hparams", "{tmp}/chars.json"], "sample_chars must be in [1, 100000], got -5"),
    ("trainer.train", ["--num-hiddens", str(10**9)], "num_hiddens must be in [1, 65536]"),
    ("trainer.tune", ["--min-hiddens", str(10**6)], "--min-hiddens 1000000"),
    ("serving.client", ["--prefix", "\udcff"], "not valid UTF-8"),
    ("serving.client", ["--prefix", "it", "--timeout", "inf"], "--timeout"),
], ids=["utf-16 without BOM", "rot13", "base64", "zlib_codec", "config corpus 5", "hparams nested 1e5",
        "sample_chars -5", "num_hiddens 1e9", "min_hiddens 1e6", "prefix not utf-8", "timeout inf"])
def test_bad_inputs_are_one_line_and_exit_2(tmp_path, module, args, needle):
    (tmp_path / "utf16.txt").write_bytes("hello world, a text without its byte-order mark".encode("utf-16-le"))
    (tmp_path / "corpus5.yaml").write_text("corpus: 5\n")
    (tmp_path / "deep.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    (tmp_path / "chars.json").write_text('{"sample_chars": -5}')
    where = {"pipeline.preprocess": ["--output", str(tmp_path / "out")],
             "trainer.train": ["--data", str(tmp_path / "nodata"), "--model-dir", str(tmp_path / "m")],
             "trainer.tune": ["--data", str(tmp_path / "nodata"), "--tuner-dir", str(tmp_path / "t")],
             "serving.client": ["--server", "127.0.0.1:1"]}[module]
    proc = run_cli(module, *where, *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert_user_error(proc, needle)
    assert not (tmp_path / "out").exists() and not (tmp_path / "m").exists()


# ---- 7. hangs ----
def test_a_glob_through_a_link_loop_ends(tmp_path):
    from pipeline.sources import resolve_sources

    (tmp_path / "loop" / "a").mkdir(parents=True)
    (tmp_path / "loop" / "a" / "up").symlink_to(tmp_path / "loop")
    (tmp_path / "loop" / "a" / "self").symlink_to(tmp_path / "loop" / "a")
    (tmp_path / "loop" / "a" / "book.txt").write_text("text")
    started = time.monotonic()
    assert resolve_sources([str(tmp_path / "loop" / "**" / "*.txt")]) == [str(tmp_path / "loop" / "a" / "book.txt")]
    assert time.monotonic() - started < 5


def test_a_time_budget_that_never_ends_is_refused(tiny_data, tmp_path):
    for bad in ("nan", "inf", "-1"):
        assert_user_error(run_cli("trainer.tune", "--data", str(tiny_data), "--tuner-dir", str(tmp_path / "t"),
                                  "--time-budget", bad), "time_budget")


# ---- 8. silently wrong ----
def test_resuming_with_another_learning_rate_is_refused_not_recorded(tiny_data, trained, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(trained[0], model)  # the session's tiny model: 2 × 16 GRU, SGD lr 2, 2 epochs, a backup kept
    before = (model / "metrics.json").read_text()
    proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(model), "--num-hiddens", "16",
                   "--batch-size", "256", "--epochs", "3", "--lr", "0.001", "--progress", "none")
    assert_user_error(proc, "lr 2.0 → 0.001")
    assert (model / "metrics.json").read_text() == before


def test_a_tuner_dir_holds_one_search(tiny_data, tmp_path):
    from trainer.search import SEARCH_RECORD, SearchConfig, SearchSpace, TuneConfig, check_same_search

    tuner_dir = tmp_path / "t"
    tuner_dir.mkdir()
    first = TuneConfig(search=SearchConfig(tuner="random"), space=SearchSpace(max_layers=2))
    check_same_search(str(tuner_dir), first)
    assert (tuner_dir / SEARCH_RECORD).exists()
    check_same_search(str(tuner_dir), first)  # the same search resumes
    from common.cli import UserError

    with pytest.raises(UserError, match="another space"):
        check_same_search(str(tuner_dir), TuneConfig(search=SearchConfig(tuner="random"),
                                                     space=SearchSpace(max_layers=3)))
    with pytest.raises(UserError, match="another tuner"):
        check_same_search(str(tuner_dir), TuneConfig(search=SearchConfig(tuner="bayesian"),
                                                     space=SearchSpace(max_layers=2)))
    with locks.exclusive(str(tuner_dir), "trainer.tune"):  # a second tuner on the same directory
        assert_user_error(run_cli("trainer.tune", "--data", str(tiny_data), "--tuner-dir", str(tuner_dir),
                                  "--tuner", "random", "--max-layers", "2"), "trainer.tune is already running")


def test_data_naming_an_unknown_tokenizer_is_refused(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    meta = json.loads((data / "metadata.json").read_text())
    meta["tokenizer"] = "bogus"
    (data / "metadata.json").write_text(json.dumps(meta))
    assert_user_error(run_cli("trainer.train", "--data", str(data), "--model-dir", str(tmp_path / "m")),
                      "tokenizer 'bogus'")


def test_export_paths_with_quotes_and_a_models_config_that_is_a_directory(trained, tmp_path):
    from common.cli import UserError
    from serving.savedmodel import export_model
    from serving.servable import read_model_config_file

    base = tmp_path / 'odd "base" dir'  # (TF's own checkpoint reader refuses backslashes: the export says so)
    export_model(str(trained[0]), str(base))
    (config,) = read_model_config_file(str(base / "models.config"))
    assert config.base_path == str(base / "deep_rnn")
    blocked = tmp_path / "blocked"
    (blocked / "models.config").mkdir(parents=True)
    with pytest.raises(UserError, match="models.config"):
        export_model(str(trained[0]), str(blocked))
    assert not (blocked / "deep_rnn" / "1").exists()  # nothing published


# ---- 11. bad settings fail before any stage runs ----
@pytest.mark.parametrize("flags, needle", [(["--grpc-port", "-1"], "not a TCP port"),
                                           (["--grpc-port", "70000"], "not a TCP port"),
                                           (["--num-layers", "0"], "num_layers"),
                                           (["--corpus", "nope.txt", "--tune", "maybe"], "enabled")])
def test_the_pipeline_checks_its_settings_before_any_stage(tmp_path, flags, needle):
    proc = run_all("--run-dir", str(tmp_path / "run"), *flags)
    assert_user_error(proc, needle)
    assert not (tmp_path / "run").exists()


# ---- 12. RUN_DIR guarded as preprocess output is ----
def test_the_pipeline_never_writes_into_a_users_folder(tmp_path):
    run = tmp_path / "mine"
    (run / "logs").mkdir(parents=True)
    (run / "config.json").write_text('{"my": "settings"}')
    (run / "logs" / "train.log").write_text("my log")
    before = snapshot(run)
    assert_user_error(run_all("--run-dir", str(run), "--grpc-port", "0", "--rest-port", "0"),
                      "did not make")
    assert snapshot(run) == before


# ---- 13. a corpus file whose name looks like a glob ----
def test_a_corpus_named_like_a_glob_is_read_by_name(tmp_path):
    from pipeline.sources import resolve_sources

    (tmp_path / "book[1].txt").write_text("text")
    (tmp_path / "book1.txt").write_text("other")
    assert resolve_sources([str(tmp_path / "book[1].txt")]) == [str(tmp_path / "book[1].txt")]
    assert resolve_sources([str(tmp_path / "book[0-9].txt")]) == [str(tmp_path / "book1.txt")]



# ---- 9, 10, 13. the server's answers to malformed requests ----
@pytest.fixture(scope="module")
def strict_server(exported, tmp_path_factory):
    """The stand-in with a short idle time and few REST slots, as its own process."""
    import subprocess
    import sys

    from serving.grpc_client import Client

    base = tmp_path_factory.mktemp("strict-serve")
    shutil.copytree(exported / "deep_rnn", base / "deep_rnn")
    grpc_port, rest_port = net.free_port(), net.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving.server", "--model-base", str(base / "deep_rnn"),
                             "--port", str(grpc_port), "--rest-port", str(rest_port), "--rest-idle-seconds", "3",
                             "--rest-max-connections", "4"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    Client(f"127.0.0.1:{grpc_port}").wait_until_ready(120, proc)
    yield proc, f"127.0.0.1:{grpc_port}", rest_port
    proc.terminate()
    proc.wait(timeout=30)


def _raw_http(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict]:
    """Sends raw bytes to the REST port; (status, JSON body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body or b"{}")


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),  # an HTTP/2 preface
    (b"GET /v1/models/deep_rnn HTTP/9.9\r\n\r\n", 505),
    (b"POST /v1/models/deep_rnn:predict HTTP/1.1\r\nContent-Length: \xc2\xb2\r\n\r\n", 400),
    (b"POST /v1/models/deep_rnn:predict HTTP/1.1\r\nContent-Length: 1" + b"0" * 30 + b"\r\n\r\n", 400),
    (b"POST /v1/models/deep_rnn:predict HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n", 429),
])
def test_malformed_http_gets_tf_servings_json_error_at_once(strict_server, request_bytes, status):
    started = time.monotonic()
    code, body = _raw_http(strict_server[2], request_bytes)
    assert code == status and isinstance(body.get("error"), str), (code, body)
    assert time.monotonic() - started < 2.5  # answered, not left to the idle time


def test_a_prefix_nested_past_numpys_dimensions_is_a_client_error(strict_server):
    nested = "it has"
    for _ in range(70):
        nested = [nested]
    data = json.dumps({"inputs": {"prefix": nested, "num_chars": 1}}).encode()
    request = (b"POST /v1/models/deep_rnn:predict HTTP/1.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(data) + data)
    code, body = _raw_http(strict_server[2], request)
    assert code == 400 and "internal" not in body["error"], body


def test_a_tensor_of_an_unknown_dtype_is_invalid_argument(strict_server):
    import grpc
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "deep_rnn"
    request.inputs["prefix"].CopyFrom(tensor_pb2.TensorProto(dtype=7, string_val=[b"it has"]))
    request.inputs["num_chars"].CopyFrom(tensor_pb2.TensorProto(dtype=9999, int_val=[3]))
    with grpc.insecure_channel(strict_server[1]) as channel:
        with pytest.raises(grpc.RpcError) as err:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()


def test_trickling_clients_cannot_hold_every_slot(strict_server):
    """The idle limit is a deadline per request: sockets sending a byte every second lose their slot after the
    idle time (3 s here), and a real client is then served."""
    import urllib.request

    _, _, port = strict_server
    tricklers = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        request = b"POST /v1/models/deep_rnn:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n"
        for step in range(6):  # 6 s of trickling, twice the idle time
            for conn in tricklers:
                try:
                    conn.send(request[step:step + 1] if step < len(request) else b"x")
                except OSError:
                    pass  # closed by the server: the promise
            time.sleep(1.0)
        data = json.dumps({"inputs": {"prefix": ["it has"], "num_chars": 3}}).encode()
        answer = urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models/deep_rnn:predict", data=data, method="POST"), timeout=10)
        assert answer.status == 200
        assert json.loads(answer.read())["outputs"][0].startswith("it has")
    finally:
        for conn in tricklers:
            conn.close()


def test_an_error_echoing_a_huge_model_name_fits_grpc_metadata(strict_server):
    """The status details travel in HTTP/2 headers (8 KiB by default): an echoed 100 kB name once turned
    NOT_FOUND into an unreadable INTERNAL; the details are cut short instead, and the server lives on."""
    import grpc
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    name = "m" * 100_000
    with grpc.insecure_channel(strict_server[1]) as channel:
        for call, request in ((prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict,
                               predict_pb2.PredictRequest()),
                              (model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus,
                               get_model_status_pb2.GetModelStatusRequest())):
            request.model_spec.name = name
            with pytest.raises(grpc.RpcError) as err:
                call(request, timeout=30)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
            assert "mmmm" in err.value.details() and len(err.value.details()) < 2000
    assert strict_server[0].poll() is None


# ---- 13. history.csv after repeated kills ----
def test_a_resumed_run_replaces_the_rows_of_the_epochs_it_repeats(tmp_path):
    """A kill after an epoch's row but before its backup made the resumed run append that epoch again (and a
    kill mid-row left half a row): the file keeps one whole row per epoch."""
    import csv

    import keras
    import numpy as np

    from trainer.callbacks import EpochCSVLogger

    path = tmp_path / "history.csv"
    # epochs 2-4 ran after the last backup; the kill cut epoch 4's row short
    path.write_text("epoch,loss,val_loss\r\n0,4.0,4.1\r\n1,3.0,3.1\r\n2,2.5,2.6\r\n3,2.4,2.5\r\n4,2")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(np.ones((8, 2)), np.ones((8, 1)), initial_epoch=2, epochs=4, verbose=0,
              callbacks=[EpochCSVLogger(str(path))])
    rows = list(csv.DictReader(open(path, newline="")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert [r["loss"] for r in rows[:2]] == ["4.0", "3.0"] and rows[2]["loss"] != "2.5"
    model.fit(np.ones((8, 2)), np.ones((8, 1)), initial_epoch=4, epochs=5, verbose=0,
              callbacks=[EpochCSVLogger(str(path))])  # a plain resume keeps every row
    assert [int(r["epoch"]) for r in csv.DictReader(open(path, newline=""))] == [0, 1, 2, 3, 4]


def test_a_bad_beam_option_is_one_line_not_beams_usage(tmp_path):
    proc = run_cli("pipeline.preprocess", "--corpus", "timemachine", "--output", str(tmp_path / "data"),
                   "--direct_num_workers=abc")
    assert_user_error(proc, "--direct_num_workers", "invalid int value")
    assert len(proc.stderr.splitlines()) < 5 and "usage" not in proc.stderr
    assert not (tmp_path / "data").exists()
