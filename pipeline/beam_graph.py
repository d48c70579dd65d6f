"""The Beam graph of the preprocessing stage.

Elements are whole chunks of text (megabytes) and numpy arrays of ids, never single characters,
so the pipeline keeps pace with a plain Python loop. Each document's shards are written by the
worker that windows it, with names fixed by (split, document, block): output is byte-identical
whatever the runner, worker count or bundle order.
"""
from __future__ import annotations

import json
import os

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from common import text
from common import vocab as vocab_lib
from pipeline import transform


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _write(path: str, data: bytes) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


class ReadDocument(beam.DoFn):
    """(doc index, path) → (doc index, (chunk index, normalised text)); errors and source facts tagged."""

    def __init__(self, cfg: transform.PreprocessConfig):
        self.cfg = cfg

    def process(self, element):
        doc_index, path = element
        try:
            chunk_index = 0
            for kind, value in transform.read_document(path, self.cfg, _open):
                if kind == "chunk":
                    yield doc_index, (chunk_index, value)
                    chunk_index += 1
                else:
                    yield beam.pvalue.TaggedOutput("sources", (doc_index, value))
        except transform.CorpusError as err:
            yield beam.pvalue.TaggedOutput("errors", str(err))


class EncodeChunk(beam.DoFn):
    """Normalised text chunk → int32 ids, with the vocabulary as a side input."""

    def __init__(self, tokenizer: str):
        self.tokenizer = tokenizer
        self._encoder = self._vocab = None

    def process(self, element, vocab_info):
        doc_index, (chunk_index, chunk) = element
        if self._vocab is not vocab_info:
            self._encoder = text.Encoder(vocab_info["vocab"], self.tokenizer)
            self._vocab = vocab_info
        yield doc_index, (chunk_index, self._encoder.encode(chunk))


def _concat(key, numbered_arrays):
    """(key, [(index, array)]) → (key, arrays concatenated in index order)."""
    parts = [array for _, array in sorted(numbered_arrays, key=lambda item: item[0])]
    return key, (np.concatenate(parts) if parts else np.zeros(0, np.int32))


class WriteShards(beam.DoFn):
    """(doc index, ids) → windows of each split, written as TFRecord shards; yields shard facts."""

    def __init__(self, cfg: transform.PreprocessConfig, out_dir: str):
        self.cfg, self.out_dir = cfg, out_dir

    def process(self, element):
        doc_index, ids = element
        make = transform.d2l_windows if self.cfg.split == "d2l" else transform.holdout_windows
        for split, split_windows in make(ids, self.cfg).items():
            for name, count, data in transform.shard_files(split, doc_index, split_windows, self.cfg):
                _write(os.path.join(self.out_dir, name), data)
                yield {"split": split, "file": name, "records": count}


def _vocab_info(counts, cfg: transform.PreprocessConfig) -> dict:
    return {"vocab": vocab_lib.build_vocab(counts, cfg.min_freq, cfg.max_tokens),
            "total_tokens": sum(n for _, n in counts)}


def _write_json(value, path: str) -> None:
    _write(path, json.dumps(value, sort_keys=True).encode())


def build(p: beam.Pipeline, files: list[str], cfg: transform.PreprocessConfig, out_dir: str) -> None:
    """Adds the stage to `p`; facts for metadata land in out_dir/_*.json for the driver."""
    read = (p
            | "Files" >> beam.Create(list(enumerate(files)))
            | "ReadNormalize" >> beam.ParDo(ReadDocument(cfg)).with_outputs("sources", "errors", main="chunks"))
    chunks = read.chunks
    vocab_info = (chunks
                  | "Count" >> beam.FlatMap(lambda kv, tok: transform.count_tokens(kv[1][1], tok).items(),
                                            cfg.tokenizer)
                  | "SumCounts" >> beam.CombinePerKey(sum)
                  | "AllCounts" >> beam.combiners.ToList()
                  | "Vocabulary" >> beam.Map(_vocab_info, cfg))
    docs = (chunks
            | "Encode" >> beam.ParDo(EncodeChunk(cfg.tokenizer), beam.pvalue.AsSingleton(vocab_info))
            | "GroupChunks" >> beam.GroupByKey()
            | "ConcatChunks" >> beam.MapTuple(_concat))
    tokens = docs | "TokenCounts" >> beam.MapTuple(lambda doc_index, ids: (doc_index, len(ids)))
    if cfg.split == "d2l":  # the book's protocol windows the corpus as one sequence
        docs = (docs
                | "OneKey" >> beam.Map(lambda kv: (0, kv))
                | "GroupDocs" >> beam.GroupByKey()
                | "ConcatDocs" >> beam.MapTuple(_concat))
    shards = docs | "WriteShards" >> beam.ParDo(WriteShards(cfg, out_dir))
    for label, pcoll in [("vocab", vocab_info), ("shards", shards | "ShardList" >> beam.combiners.ToList()),
                         ("sources", read.sources | "SourceList" >> beam.combiners.ToList()),
                         ("tokens", tokens | "TokenList" >> beam.combiners.ToList()),
                         ("errors", read.errors | "ErrorList" >> beam.combiners.ToList())]:
        _ = pcoll | f"Write_{label}" >> beam.Map(_write_json, os.path.join(out_dir, f"_{label}.json"))
