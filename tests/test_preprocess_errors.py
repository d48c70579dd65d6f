"""Bad input to the preprocessing stage: one line naming file and reason, exit 2, no output."""
from __future__ import annotations

import socket

import pytest

from common.cli import UserError
from pipeline import transform
from pipeline.preprocessing import preprocess
from tests.conftest import assert_user_error, run_cli

pytestmark = pytest.mark.reliability


def _cases(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "spaces.txt").write_text("   \n\t  \n")
    (tmp_path / "badutf8.txt").write_bytes("café text ".encode() * 10 + b"\xff\xfe bad")  # damaged UTF-8
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
        "unreadable": ([str(sock_path)], "not a regular file"),
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


def test_more_bad_corpora(tmp_path):
    """Binary data and mixed encodings are refused; BOM, CRLF and a 50 MB line are processed."""
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "mixed.txt").write_bytes("café au lait ".encode() * 20 + "café".encode("latin-1"))
    for name in ("binary.bin", "mixed.txt"):
        with pytest.raises(UserError, match="invalid UTF-8") as err:
            preprocess([str(tmp_path / name)], str(tmp_path / "out"), transform.PreprocessConfig())
        assert name in str(err.value)
        assert not (tmp_path / "out").exists()
    (tmp_path / "bom_crlf.txt").write_bytes(b"\xef\xbb\xbf" + b"The Time Traveller\r\nwas here.\r\n" * 40)
    meta = preprocess([str(tmp_path / "bom_crlf.txt")], str(tmp_path / "ok"),
                      transform.PreprocessConfig(normalize="none", num_steps=8))
    assert meta["total_tokens"] == len("The Time Traveller\nwas here.\n") * 40


@pytest.mark.reliability
def test_a_50mb_line_without_newline(tmp_path):
    path = tmp_path / "line.txt"
    with open(path, "wb") as f:
        for _ in range(50):
            f.write(b"abc defg hij " * 80659)  # ~1 MiB of letters and spaces, no newline
    meta = preprocess([str(path)], str(tmp_path / "out"), transform.PreprocessConfig(num_steps=32, stride=4096))
    assert meta["total_tokens"] == 50 * 13 * 80659 and meta["windows"]["train"] > 0


def test_a_file_that_vanishes_mid_run(tmp_path, monkeypatch):
    from pipeline import preprocessing as stage

    doomed = tmp_path / "doomed.txt"
    doomed.write_text("some words that will not be read " * 50)
    real = stage.sources.resolve_sources

    def resolve_then_delete(srcs):
        files = real(srcs)
        doomed.unlink()  # gone after the checks, before Beam reads it
        return files

    monkeypatch.setattr(stage.sources, "resolve_sources", resolve_then_delete)
    with pytest.raises(UserError, match="doomed.txt: cannot read"):
        preprocess([str(doomed)], str(tmp_path / "out"), transform.PreprocessConfig())
    assert not (tmp_path / "out").exists()
