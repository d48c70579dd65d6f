"""Single-process plain-Python implementation of the preprocessing transformation.

The yardstick for the Beam stage: bench/preprocess.py times both on the same input, and tests
check both give byte-identical files. Same functions as the Beam graph, only no Beam.
"""
from __future__ import annotations

import os
from collections import Counter

import numpy as np

from common import text
from common import vocab as vocab_lib
from pipeline import transform


def preprocess_reference(files: list[str], out_dir: str, cfg: transform.PreprocessConfig) -> dict:
    """Writes the same shards as the Beam graph into out_dir; returns the same facts."""
    chunks, facts = [], {"sources": [], "errors": [], "shards": []}
    for doc_index, path in enumerate(files):
        doc_chunks = []
        try:
            for kind, value in transform.read_document(path, cfg, lambda p: open(p, "rb")):
                if kind == "chunk":
                    doc_chunks.append(value)
                else:
                    facts["sources"].append((doc_index, value))
        except transform.CorpusError as err:
            facts["errors"].append(str(err))
        chunks.append(doc_chunks)
    counts = Counter()
    for doc_chunks in chunks:
        for chunk in doc_chunks:
            counts.update(transform.count_tokens(chunk, cfg.tokenizer))
    vocab = vocab_lib.build_vocab(counts.items(), cfg.min_freq, cfg.max_tokens)
    facts["vocab"] = {"vocab": vocab, "total_tokens": sum(counts.values())}
    encoder = text.Encoder(vocab, cfg.tokenizer)
    docs = [np.concatenate([encoder.encode(c) for c in doc_chunks] or [np.zeros(0, np.int32)])
            for doc_chunks in chunks]
    facts["tokens"] = [(doc_index, len(ids)) for doc_index, ids in enumerate(docs)]
    if cfg.split == "d2l":
        docs = [np.concatenate(docs)]
    make = transform.d2l_windows if cfg.split == "d2l" else transform.holdout_windows
    for doc_index, ids in enumerate(docs):
        for split, split_windows in make(ids, cfg).items():
            for name, count, data in transform.shard_files(split, doc_index, split_windows, cfg):
                with open(os.path.join(out_dir, name), "wb") as f:
                    f.write(data)
                facts["shards"].append({"split": split, "file": name, "records": count})
    return facts
