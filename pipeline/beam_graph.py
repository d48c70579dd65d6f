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
    """(doc index, path) → ("chunk", (doc index, (chunk index, normalised text))), then ("source", (doc index,
    facts)), or ("error", message). One output stream split by kind afterwards, not a DoFn's tagged outputs:
    Beam's DaskRunner does not keep tagged outputs apart."""

    def __init__(self, cfg: transform.PreprocessConfig):
        self.cfg = cfg

    def process(self, element):
        doc_index, path = element
        try:
            chunk_index = 0
            for kind, value in transform.read_document(path, self.cfg, _open):
                if kind == "chunk":
                    yield "chunk", (doc_index, (chunk_index, value))
                    chunk_index += 1
                else:
                    yield "source", (doc_index, value)
        except transform.CorpusError as err:
            yield "error", str(err)


def _of_kind(read, kind: str):
    """The elements of one kind among ReadDocument's output."""
    return (read
            | f"Only_{kind}" >> beam.Filter(lambda element, wanted: element[0] == wanted, kind)
            | f"Value_{kind}" >> beam.Map(lambda element: element[1]))


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


FACTS_FILE = "_facts.json"  # what the driver reads back: vocabulary, shards, sources, token counts, errors


def build(p: beam.Pipeline, files: list[str], cfg: transform.PreprocessConfig, out_dir: str) -> None:
    """Adds the stage to `p`. Shards go to out_dir through Beam's filesystems; every fact the driver needs
    leaves the workers in one JSON file written by Beam's own WriteToText, the graph's only leaf (a runner that
    runs a graph from its last transform, as Beam's DaskRunner does, still runs all of it)."""
    read = (p
            | "Files" >> beam.Create(list(enumerate(files)))
            | "ReadNormalize" >> beam.ParDo(ReadDocument(cfg)))
    chunks, read_sources, read_errors = (_of_kind(read, kind) for kind in ("chunk", "source", "error"))
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
    facts = [(label, pcoll | f"Key_{label}" >> beam.Map(lambda value, key: (key, value), label))
             for label, pcoll in [("vocab", vocab_info), ("shards", shards | "ShardList" >> beam.combiners.ToList()),
                                  ("sources", read_sources | "SourceList" >> beam.combiners.ToList()),
                                  ("tokens", tokens | "TokenList" >> beam.combiners.ToList()),
                                  ("errors", read_errors | "ErrorList" >> beam.combiners.ToList())]]
    _ = ([pcoll for _, pcoll in facts]
         | "AllFacts" >> beam.Flatten()
         | "FactsDict" >> beam.combiners.ToDict()
         | "FactsJson" >> beam.Map(lambda value: json.dumps(value, sort_keys=True))
         | "WriteFacts" >> beam.io.WriteToText(os.path.join(out_dir, FACTS_FILE), num_shards=1,
                                               shard_name_template=""))
