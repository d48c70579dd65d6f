"""Real books in: encodings, Project Gutenberg boilerplate, per-source metadata, and deep_rnn.evaluate."""
from __future__ import annotations

import hashlib
import json
import math
import re

import pytest

from common import text
from common.cli import UserError
from pipeline import boilerplate, transform
from pipeline.preprocessing import preprocess
from tests.conftest import SHARED_DATA, assert_user_error, run_cli

BOOKS = sorted((SHARED_DATA / "books").glob("*.txt"))
PROSE = ("\u201cIt\u2019s a caf\u00e9,\u201d said the Time Traveller \u2014 na\u00efvely, as it seemed to us. "
         "The fire burned brightly, and the soft radiance of the lights caught the bubbles.\n") * 40
HEADER = ("The Project Gutenberg eBook of A Small Book\n\nThis eBook is for the use of anyone anywhere.\n\n"
          "Title: A Small Book\n\n*** START OF {which} PROJECT GUTENBERG EBOOK A SMALL BOOK ***\n")
FOOTER = "{end}*** END OF {which} PROJECT GUTENBERG EBOOK A SMALL BOOK ***\n\nSection 1. General Terms of Use\n"


def read_text(path, **cfg) -> tuple[str, dict]:
    """The text preprocessing keeps of a file (normaliser 'none'), and its source facts."""
    chunks, facts = [], None
    for kind, value in transform.read_document(str(path), transform.PreprocessConfig(normalize="none", **cfg),
                                               lambda p: open(p, "rb")):
        if kind == "chunk":
            chunks.append(value)
        else:
            facts = value
    return "".join(chunks), facts


# ---- encodings ----

def test_windows_1252_and_utf8_with_bom_decode_to_the_same_text(tmp_path):
    (tmp_path / "cp1252.txt").write_bytes(PROSE.replace("\n", "\r\n").encode("cp1252"))
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + PROSE.encode("utf-8"))
    windows_text, windows_facts = read_text(tmp_path / "cp1252.txt")
    bom_text, bom_facts = read_text(tmp_path / "bom.txt")
    assert windows_text == bom_text == PROSE
    assert (windows_facts["encoding"], windows_facts["bom"]) == ("cp1252", False)
    assert (bom_facts["encoding"], bom_facts["bom"]) == ("utf-8", True)


@pytest.mark.parametrize("book", BOOKS[:2], ids=lambda p: p.stem)
def test_a_book_re_saved_as_windows_1252_is_detected(tmp_path, book):
    original = book.read_text(encoding="utf-8")
    (tmp_path / "resaved.txt").write_bytes(original.encode("cp1252", errors="replace"))
    resaved, facts = read_text(tmp_path / "resaved.txt", strip_boilerplate="none")
    assert facts["encoding"] == "cp1252"
    assert resaved == original.encode("cp1252", errors="replace").decode("cp1252").replace("\r\n", "\n")


def test_explicit_codec_that_fails_names_file_and_byte_offset(tmp_path):
    path = tmp_path / "cp1252.txt"
    path.write_bytes(PROSE.encode("cp1252"))
    offset = PROSE.encode("cp1252").index(b"\x93")
    with pytest.raises(UserError, match=rf"cp1252.txt: invalid UTF-8 near byte {offset} "):
        preprocess([str(path)], str(tmp_path / "out"), transform.PreprocessConfig(encoding="utf-8"))
    proc = run_cli("pipeline.preprocess", "--corpus", str(path), "--output", str(tmp_path / "out"),
                   "--encoding", "utf-8")
    assert_user_error(proc, str(path), f"near byte {offset}")
    assert not (tmp_path / "out").exists()
    proc = run_cli("pipeline.preprocess", "--corpus", str(path), "--output", str(tmp_path / "out"),
                   "--encoding", "klingon")
    assert_user_error(proc, "--encoding klingon")
    meta = preprocess([str(path)], str(tmp_path / "out"),
                      transform.PreprocessConfig(encoding="utf-8", decode_errors="replace", normalize="none",
                                                 num_steps=8))
    assert "\ufffd" in open(tmp_path / "out" / "vocab.txt", encoding="utf-8").read()
    assert meta["sources"][0]["encoding"] == "utf-8"


def test_damaged_utf8_and_binary_are_refused_not_guessed(tmp_path):
    (tmp_path / "mixed.txt").write_bytes("café au lait ".encode() * 20 + "café".encode("latin-1"))
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 64)
    for name, needle in (("mixed.txt", "otherwise UTF-8"), ("binary.bin", "binary data")):
        with pytest.raises(UserError, match=needle):
            preprocess([str(tmp_path / name)], str(tmp_path / "out"), transform.PreprocessConfig())


# ---- Project Gutenberg boilerplate ----

@pytest.mark.parametrize("which,end", [("THE", ""), ("THIS", "End of the Project Gutenberg EBook of A Small Book\n\n")])
def test_gutenberg_header_and_footer_are_stripped(tmp_path, which, end):
    header, footer = HEADER.format(which=which), FOOTER.format(which=which, end=end)
    path = tmp_path / "book.txt"
    path.write_text(header + PROSE + footer)
    kept, facts = read_text(path)
    assert kept == PROSE
    assert facts["boilerplate"] == "gutenberg" and facts["stripped_chars"] == len(header) + len(footer)
    assert facts["chars"] == len(PROSE)
    untouched, facts = read_text(path, strip_boilerplate="none")
    assert untouched == header + PROSE + footer and facts["stripped_chars"] == 0


def test_a_file_without_boilerplate_is_left_untouched(tmp_path):
    (tmp_path / "plain.txt").write_text(PROSE)
    kept, facts = read_text(tmp_path / "plain.txt")
    assert kept == PROSE and (facts["boilerplate"], facts["stripped_chars"]) == ("none", 0)
    with pytest.raises(UserError, match="plain.txt: --strip-boilerplate gutenberg: no Project Gutenberg"):
        preprocess([str(tmp_path / "plain.txt")], str(tmp_path / "out"),
                   transform.PreprocessConfig(strip_boilerplate="gutenberg"))


def test_the_time_machine_keeps_the_books_protocol(seeded_cache, timemachine_text):
    path = seeded_cache / "datasets" / "timemachine.txt"
    kept, facts = read_text(path)
    assert kept == timemachine_text and facts["stripped_chars"] == 0 and facts["encoding"] == "utf-8"
    chunks = [v for k, v in transform.read_document(str(path), transform.PreprocessConfig(split="d2l"),
                                                    lambda p: open(p, "rb")) if k == "chunk"]
    assert "".join(chunks) == re.sub("[^A-Za-z]+", " ", timemachine_text).lower()  # d2l's TimeMachine._preprocess


def test_stripping_streams_across_pieces(tmp_path, monkeypatch):
    """A book longer than the header and footer scans, read in small pieces, strips the same as whole."""
    body = PROSE * 60  # > HEADER_SCAN + FOOTER_SCAN characters
    assert len(body) > boilerplate.HEADER_SCAN + boilerplate.FOOTER_SCAN
    path = tmp_path / "long.txt"
    path.write_text(HEADER.format(which="THE") + body + FOOTER.format(which="THE", end=""))
    monkeypatch.setattr(transform, "READ_BYTES", 4096)
    assert read_text(path)[0] == body


@pytest.mark.parametrize("book", BOOKS, ids=lambda p: p.stem)
def test_every_shared_book_loses_its_licence(book):
    kept, facts = read_text(book)
    assert facts["boilerplate"] == "gutenberg" and 15_000 < facts["stripped_chars"] < 25_000
    assert "gutenberg" not in kept.lower() and len(kept) > 100_000


def test_empty_after_stripping_is_refused_with_one_line(tmp_path):
    path = tmp_path / "hollow.txt"
    path.write_text(HEADER.format(which="THE") + FOOTER.format(which="THE", end=""))
    (tmp_path / "good.txt").write_text(PROSE)
    proc = run_cli("pipeline.preprocess", "--corpus", str(tmp_path / "good.txt"), str(path),
                   "--output", str(tmp_path / "out"))
    assert_user_error(proc, "hollow.txt", "nothing is left after removing the Project Gutenberg header")
    assert not (tmp_path / "out").exists()


# ---- per-source metadata ----

@pytest.mark.parametrize("split", ["holdout", "d2l"])
def test_metadata_lists_every_source(tmp_path, split):
    (tmp_path / "a.txt").write_text(HEADER.format(which="THE") + PROSE + FOOTER.format(which="THE", end=""))
    (tmp_path / "b.txt").write_bytes(PROSE[: len(PROSE) // 2].encode("cp1252"))
    cfg = transform.PreprocessConfig(normalize="none", num_steps=16, split=split, num_train=300, num_val=100)
    meta = preprocess([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], str(tmp_path / "out"), cfg)
    a, b = meta["sources"]
    assert [a["encoding"], b["encoding"]] == ["utf-8", "cp1252"]
    assert a["sha256"] == hashlib.sha256((tmp_path / "a.txt").read_bytes()).hexdigest()
    assert a["bytes"] == (tmp_path / "a.txt").stat().st_size and a["stripped_chars"] > 0 == b["stripped_chars"]
    assert (a["tokens"], b["tokens"]) == (len(PROSE), len(PROSE) // 2)
    assert a["tokens"] + b["tokens"] == meta["total_tokens"]
    for part in ("train", "valid"):
        assert a["windows"][part] + b["windows"][part] == meta["windows"][part]
    if split == "holdout":  # each source's last tenth validates
        assert b["windows"]["valid"] == (round(len(PROSE) // 2 * 0.1) - 17) // 16 + 1


# ---- deep_rnn.evaluate ----

def _validation_text(tiny_data) -> str:
    """The Time Machine's validation part as the tiny run's holdout split cut it (normalised text)."""
    meta = json.loads((tiny_data / "metadata.json").read_text())
    source = meta["sources"][0]
    normalised = text.normalize(open(source["path"], encoding="utf-8").read(), "d2l")
    return normalised[len(normalised) - int(round(len(normalised) * 0.1)):]


def test_evaluate_gives_the_trainers_validation_perplexity(trained, exported, tiny_data, tmp_path):
    from deep_rnn.evaluation import evaluate

    model_dir, metrics = trained
    (tmp_path / "valid.txt").write_text(_validation_text(tiny_data))
    rows = evaluate([str(tmp_path / "valid.txt")], model_dir=str(model_dir))
    assert math.isclose(rows[0]["perplexity"], metrics["best_val_ppl"], rel_tol=1e-4)
    served = evaluate([str(tmp_path / "valid.txt")], export=str(exported / "deep_rnn"), batch_size=1000)
    assert math.isclose(served[0]["perplexity"], metrics["best_val_ppl"], rel_tol=1e-4)
    assert math.isclose(rows[0]["bits_per_token"], math.log2(rows[0]["perplexity"]), rel_tol=1e-9)


def test_evaluate_cli_per_source_json_and_unknown_tokens(trained, tmp_path):
    model_dir, _ = trained
    (tmp_path / "greek.txt").write_text("αβγ δεζ " * 40 + PROSE)  # the d2l normaliser maps Greek to spaces
    (tmp_path / "cp1252.txt").write_bytes(PROSE.encode("cp1252"))
    out = tmp_path / "eval.json"
    proc = run_cli("deep_rnn.evaluate", "--model-dir", str(model_dir), "--corpus", str(tmp_path / "greek.txt"),
                   str(tmp_path / "cp1252.txt"), "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["source"] for r in rows] == [str(tmp_path / "greek.txt"), str(tmp_path / "cp1252.txt"), "overall"]
    for row in rows:
        assert {"source", "tokens", "unknown_rate", "perplexity", "bits_per_token"} <= set(row)
        assert row["perplexity"] > 1 and row["unknown_rate"] == 0.0  # d2l text has only letters and spaces
    assert rows[1]["encoding"] == "cp1252"
    assert rows[2]["tokens"] == rows[0]["tokens"] + rows[1]["tokens"]
    assert "overall" in proc.stdout and "perplexity" in proc.stdout
    (tmp_path / "short.txt").write_text("too short")
    proc = run_cli("deep_rnn.evaluate", "--model-dir", str(model_dir), "--corpus", str(tmp_path / "short.txt"))
    assert_user_error(proc, "short.txt", "fewer than one window")


def test_unknown_rate_counts_characters_outside_the_vocabulary():
    """A char model trained without normalisation sees other characters as <unk>; the share is reported."""
    from deep_rnn.evaluation import SourceText, evaluate_sources

    ids = text.Encoder(["<unk>", "a", "b"], "char").encode("abxyab")
    rows = evaluate_sources([SourceText("s", {"chars": 6}, list("abxyab"), ids)], lambda src: (6.0, 3))
    assert rows[0]["unknown_rate"] == pytest.approx(2 / 6) and rows[0]["perplexity"] == pytest.approx(math.e ** 2)
