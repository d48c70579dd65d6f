"""The Beam preprocessing stage: the book's protocol, holdout, determinism, runners, formats."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from common import text
from common import vocab as vocab_lib
from common.atomic import MARKER
from pipeline import records, sources, transform
from pipeline.preprocessing import preprocess
from pipeline.reference import preprocess_reference


def read_windows(data_dir: Path, split: str) -> np.ndarray:
    import tensorflow as tf

    files = sorted(str(p) for p in data_dir.glob(f"{split}-*.tfrecord"))
    spec = {"tokens": tf.io.VarLenFeature(tf.int64)}
    batches = [tf.sparse.to_dense(tf.io.parse_example(b, spec)["tokens"]).numpy()
               for b in tf.data.TFRecordDataset(files).batch(4096)]
    return np.concatenate(batches) if batches else np.zeros((0, 0), np.int64)


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())
            if p.name not in ("metadata.json", MARKER)}  # the marker says who wrote the directory, not data


@pytest.fixture(scope="module")
def d2l_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("d2l") / "data"
    preprocess(["timemachine"], str(out), transform.PreprocessConfig(split="d2l"))
    return out


def test_d2l_split_reproduces_the_book(d2l_data, timemachine_text):
    meta = json.loads((d2l_data / "metadata.json").read_text())
    vocab = vocab_lib.read_vocab(str(d2l_data / "vocab.txt"))
    assert meta["windows"] == {"train": 10000, "valid": 5000}
    assert len(vocab) == meta["vocab_size"] == 28 and vocab[0] == "<unk>"
    assert sorted(vocab[1:]) == sorted(" abcdefghijklmnopqrstuvwxyz")
    corpus = re.sub("[^A-Za-z]+", " ", timemachine_text).lower()  # the book's _preprocess
    assert meta["total_tokens"] == len(corpus) == 173428
    train, valid = read_windows(d2l_data, "train"), read_windows(d2l_data, "valid")
    assert train.shape == (10000, 33) and valid.shape == (5000, 33)
    decode = lambda row: "".join(vocab[i] for i in row)  # noqa: E731
    for i in (0, 1, 4321, 9999):
        assert decode(train[i]) == corpus[i: i + 33]
    for i in (0, 4999):
        assert decode(valid[i]) == corpus[10000 + i: 10000 + i + 33]
    # stride 1: consecutive windows overlap in all but one token; whole text recoverable
    assert decode(train[:, 0]) + decode(train[-1, 1:]) == corpus[: 10000 + 32]
    src = meta["sources"][0]
    assert src["bytes"] == 178979 and src["sha256"] == sources.NAMED_CORPORA["timemachine"].sha256


def test_vocabulary_is_by_descending_frequency(d2l_data, timemachine_text):
    from collections import Counter

    vocab = vocab_lib.read_vocab(str(d2l_data / "vocab.txt"))
    counts = Counter(re.sub("[^A-Za-z]+", " ", timemachine_text).lower())
    freqs = [counts[t] for t in vocab[1:]]
    assert freqs == sorted(freqs, reverse=True) and vocab[1] == " " and vocab[2] == "e"


def test_holdout_windows_never_cross_the_boundary(tmp_path):
    docs = ["".join(random.Random(d).choice("abc ") for _ in range(1000 + 37 * d)) for d in range(3)]
    paths = []
    for d, doc in enumerate(docs):
        paths.append(tmp_path / f"doc{d}.txt")
        paths[-1].write_text(doc)
    out = tmp_path / "data"
    cfg = transform.PreprocessConfig(split="holdout", num_steps=8, valid_fraction=0.2, normalize="none")
    meta = preprocess([str(tmp_path / "doc*.txt")], str(out), cfg)
    vocab = vocab_lib.read_vocab(str(out / "vocab.txt"))
    decode = lambda row: "".join(vocab[i] for i in row)  # noqa: E731
    expected = {"train": 0, "valid": 0}
    for d, doc in enumerate(docs):
        boundary = len(doc) - round(len(doc) * 0.2)
        for split, part in (("train", doc[:boundary]), ("valid", doc[boundary:])):
            wins = read_windows_for_doc(out, split, d)
            starts = range(0, len(part) - 9 + 1, 8)
            assert [decode(w) for w in wins] == [part[s: s + 9] for s in starts]
            expected[split] += len(starts)
    assert meta["windows"] == expected


def read_windows_for_doc(out: Path, split: str, doc: int) -> np.ndarray:
    import tensorflow as tf

    spec = {"tokens": tf.io.FixedLenFeature([9], tf.int64)}
    files = sorted(str(p) for p in out.glob(f"{split}-{doc:05d}-*.tfrecord"))
    return [tf.io.parse_single_example(r, spec)["tokens"].numpy() for r in tf.data.TFRecordDataset(files)]


def test_same_run_twice_gives_identical_bytes(tmp_path, d2l_data):
    again = tmp_path / "again"
    preprocess(["timemachine"], str(again), transform.PreprocessConfig(split="d2l"))
    assert file_bytes(again) == file_bytes(d2l_data)
    meta1, meta2 = (json.loads((d / "metadata.json").read_text()) for d in (again, d2l_data))
    assert meta1 == meta2


def test_beam_equals_plain_python_reference(tmp_path):
    """Many documents, word tokens (ids above 127: multi-byte varints), small shards."""
    words = [f"w{i}" for i in range(400)]
    rng = random.Random(0)
    files = []
    for d in range(4):
        path = tmp_path / f"c{d}.txt"
        path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(60 + d)))
        files.append(str(path))
    cfg = transform.PreprocessConfig(tokenizer="word", normalize="none", num_steps=5,
                                     records_per_shard=50, min_freq=2)
    beam_out, ref_out = tmp_path / "beam", tmp_path / "ref"
    preprocess(files, str(beam_out), cfg)
    ref_out.mkdir()
    facts = preprocess_reference(files, str(ref_out), cfg)
    (ref_out / "vocab.txt").write_text(vocab_lib.vocab_to_text(facts["vocab"]["vocab"]))
    assert file_bytes(beam_out) == file_bytes(ref_out)
    assert len(list(beam_out.glob("train-00003-*.tfrecord"))) > 1


@pytest.mark.slow
def test_multiprocessing_runner_gives_same_records(tmp_path, d2l_data):
    out = tmp_path / "mp"
    preprocess(["timemachine"], str(out), transform.PreprocessConfig(split="d2l"),
               ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert file_bytes(out) == file_bytes(d2l_data)


def test_default_runner_stays_on_this_machine(tmp_path, no_network):
    """Beam's own default (DirectRunner) looks up github.com to fetch Prism on every run; ours must not
    (conftest's no_network fixture records lookups), nor leave Beam temporary directories behind."""
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("beam-temp*"))
    corpus = tmp_path / "small.txt"
    corpus.write_text("the time machine by h g wells\n" * 50)
    preprocess([str(corpus)], str(tmp_path / "out"), transform.PreprocessConfig(num_steps=8))
    assert no_network == []
    assert set(Path(tempfile.gettempdir()).glob("beam-temp*")) <= before


def test_bom_crlf_and_a_very_long_line(tmp_path):
    body = ("Hello, World!\r\nSecond line\r\n" * 3) + "x" * 30_000_000  # 30 MB without a newline
    path = tmp_path / "odd.txt"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    cfg = transform.PreprocessConfig(normalize="none", num_steps=4, stride=1000)
    meta = preprocess([str(path)], str(tmp_path / "out"), cfg)
    vocab = vocab_lib.read_vocab(str(tmp_path / "out" / "vocab.txt"))
    assert "\ufeff" not in vocab and "\r" not in vocab and "\n" in vocab
    assert meta["total_tokens"] == len(body.replace("\r\n", "\n"))
    d2l = preprocess([str(path)], str(tmp_path / "out2"), transform.PreprocessConfig(num_steps=4, stride=1000))
    assert d2l["total_tokens"] == len(text.normalize(body, "d2l"))


def test_chunked_reading_equals_whole_file_processing(tmp_path, monkeypatch):
    """Tiny read pieces force many cuts; the normalised text must not change."""
    rng = random.Random(1)
    raw = "".join(rng.choice(["ab", "C", " ", "!!", "\r\n", "\n", "é", "xyz. "]) for _ in range(3000))
    path = tmp_path / "t.txt"
    path.write_bytes(raw.encode())
    monkeypatch.setattr(transform, "READ_BYTES", 7)
    for norm in ("d2l", "none"):
        for tok in ("char", "word"):
            cfg = transform.PreprocessConfig(normalize=norm, tokenizer=tok)
            chunks = [v for k, v in transform.read_document(str(path), cfg, lambda p: open(p, "rb"))
                      if k == "chunk"]
            whole = text.normalize(raw.replace("\r\n", "\n"), norm)
            assert text.tokenize("".join(chunks), tok) == text.tokenize(whole, tok), (norm, tok)
            assert sum((text.tokenize(c, tok) for c in chunks), []) == text.tokenize(whole, tok)


def test_records_match_tensorflow_serialisation():
    import tensorflow as tf

    rows = np.array([[0, 1, 127, 128, 300], [16383, 16384, 2**20, 5, 0]], dtype=np.int64)
    ours = records.serialize_windows(rows)
    small = rows % 128
    assert records.tfrecord_file(small) == records.frame_records(records.serialize_windows(small))
    for row, data in zip(rows, ours):
        theirs = tf.train.Example(features=tf.train.Features(feature={
            "tokens": tf.train.Feature(int64_list=tf.train.Int64List(value=row))})).SerializeToString()
        assert data == theirs


def test_vocab_file_round_trips_awkward_tokens():
    vocab = ["<unk>", "\n", "\\", "\\n", "\r", "a b", "é"]
    assert vocab_lib.vocab_from_text(vocab_lib.vocab_to_text(vocab)) == vocab


def test_python_and_graph_normalisers_agree():
    import tensorflow as tf

    samples = ["It has, 12 TIMES!\nthe  end", "éàü -- Ünïcode", "", "   ", "a\r\nb"]
    for name in text.NORMALIZERS:
        got = text.tf_normalize(tf.constant(samples), name).numpy()
        assert [g.decode() for g in got] == [text.normalize(s, name) for s in samples]
        for tok in text.TOKENIZERS:
            ragged = text.tf_tokenize(tf.constant([text.normalize(s, name) for s in samples]), tok)
            assert [[t.decode() for t in row] for row in ragged.to_list()] == \
                [text.tokenize(text.normalize(s, name), tok) for s in samples]


def test_named_corpus_download_is_verified(tmp_path, monkeypatch):
    """The real get_file path, fed from a file:// URL: a good file is cached, a bad one refused."""
    from common.cli import UserError

    good = sources.NAMED_CORPORA["timemachine"]
    src = Path(__file__).resolve().parents[2] / "shared" / "data" / "timemachine.txt"
    monkeypatch.delenv("DEEP_RNN_SEED_DIR", raising=False)  # an offline mirror would answer instead
    monkeypatch.setenv("DEEP_RNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sources.NAMED_CORPORA, "timemachine",
                        sources.NamedCorpus(f"file://{src}", good.sha256, good.sha1, good.size))
    path = sources.fetch_named("timemachine")
    assert Path(path).read_bytes() == src.read_bytes() and str(tmp_path) in path
    bad = tmp_path / "bad.txt"
    bad.write_bytes(src.read_bytes()[:-1] + b"X")
    monkeypatch.setenv("DEEP_RNN_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setitem(sources.NAMED_CORPORA, "timemachine",
                        sources.NamedCorpus(f"file://{bad}", good.sha256, good.sha1, good.size))
    with pytest.raises(UserError, match="download"):
        sources.fetch_named("timemachine")
