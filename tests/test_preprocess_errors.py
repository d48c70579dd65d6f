"""Bad input to the preprocessing stage: one line naming file and reason, exit 2, no output."""
from __future__ import annotations

import socket

import pytest

from pipeline import transform
from pipeline.cli import UserError
from pipeline.preprocess import preprocess
from tests.conftest import assert_user_error, run_cli

pytestmark = pytest.mark.reliability


def _cases(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "spaces.txt").write_text("   \n\t  \n")
    (tmp_path / "badutf8.txt").write_bytes(b"good text " * 10 + b"\xff\xfe bad")
    (tmp_path / "short.txt").write_text("just a few words")
    (tmp_path / "adir").mkdir()
    sock_path = tmp_path / "socket.txt"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    return {
        "missing": ([str(tmp_path / "nope.txt")], "no such file"),
        "glob": ([str(tmp_path / "*.nothing")], "matches no file"),
        "empty": ([str(tmp_path / "empty.txt")], "empty"),
        "whitespace": ([str(tmp_path / "spaces.txt")], "too short"),
        "directory": ([str(tmp_path / "adir")], "is a directory"),
        "unreadable": ([str(sock_path)], "cannot read"),
        "invalid_utf8": ([str(tmp_path / "badutf8.txt")], "invalid UTF-8"),
        "too_short": ([str(tmp_path / "short.txt")], "too short"),
    }, sock


@pytest.mark.parametrize("case", ["missing", "glob", "empty", "whitespace", "directory",
                                  "unreadable", "invalid_utf8", "too_short"])
def test_bad_input_is_refused_in_process(tmp_path, case):
    cases, sock = _cases(tmp_path)
    corpus, needle = cases[case]
    out = tmp_path / "out"
    with pytest.raises(UserError, match=needle):
        preprocess(corpus, str(out), transform.PreprocessConfig())
    sock.close()
    assert not out.exists()
    assert not list(tmp_path.glob("out.*")), "temporary output left behind"


def test_cli_gives_one_line_and_exit_2(tmp_path):
    cases, sock = _cases(tmp_path)
    for case in ("missing", "invalid_utf8"):
        corpus, needle = cases[case]
        proc = run_cli("pipeline.preprocess", "--corpus", *corpus, "--output", str(tmp_path / "out"))
        assert_user_error(proc, needle, corpus[0])
    proc = run_cli("pipeline.preprocess", "--corpus", "x", "--output", str(tmp_path / "o"), "--num-steps", "0")
    assert_user_error(proc, "--num-steps")
    sock.close()
    assert not (tmp_path / "out").exists()


def test_decode_errors_replace_continues(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"good text " * 10 + b"\xff bad text")
    meta = preprocess([str(tmp_path / "bad.txt")], str(tmp_path / "out"),
                      transform.PreprocessConfig(decode_errors="replace", normalize="none", num_steps=4))
    assert meta["windows"]["train"] > 0


def test_failed_run_keeps_previous_output(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("some text that is long enough for a window or two " * 20)
    out = tmp_path / "out"
    preprocess([str(good)], str(out), transform.PreprocessConfig(num_steps=4))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "bad.txt").write_bytes(b"\xff" * 100)
    with pytest.raises(UserError):
        preprocess([str(good), str(tmp_path / "bad.txt")], str(out), transform.PreprocessConfig(num_steps=4))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
