"""tf.data input from the preprocessing stage's directory: windows → (inputs, targets) batches."""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

import tensorflow as tf

from pipeline import vocab as vocab_lib
from pipeline.cli import UserError


@dataclass(frozen=True)
class DataInfo:
    """What the trainer needs to know about RUN/data, read from its metadata and vocabulary."""

    data_dir: str
    vocab: tuple[str, ...]
    num_steps: int
    normalize: str
    tokenizer: str
    train_files: tuple[str, ...]
    valid_files: tuple[str, ...]
    num_train: int
    num_valid: int

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def vocab_sha256(self) -> str:
        return vocab_lib.vocab_sha256(list(self.vocab))


def load_data_info(data_dir: str) -> DataInfo:
    """Reads RUN/data; missing pieces are a UserError naming what is missing."""
    if not os.path.isdir(data_dir):
        raise UserError(f"{data_dir}: no such data directory (run pipeline.preprocess first)")
    paths = {name: os.path.join(data_dir, name) for name in ("metadata.json", "vocab.txt")}
    for name, path in paths.items():
        if not os.path.exists(path):
            raise UserError(f"{data_dir}: no {name}; is this the output of pipeline.preprocess?")
    with open(paths["metadata.json"]) as f:
        meta = json.load(f)
    vocab = vocab_lib.read_vocab(paths["vocab.txt"])
    files = {split: tuple(sorted(glob.glob(os.path.join(data_dir, f"{split}-*.tfrecord"))))
             for split in ("train", "valid")}
    for split, found in files.items():
        if not found:
            raise UserError(f"{data_dir}: no {split}-*.tfrecord records")
    if len(vocab) != meta["vocab_size"]:
        raise UserError(f"{data_dir}: vocab.txt has {len(vocab)} tokens, metadata says {meta['vocab_size']}")
    return DataInfo(data_dir=data_dir, vocab=tuple(vocab), num_steps=int(meta["num_steps"]),
                    normalize=meta["normalize"], tokenizer=meta["tokenizer"],
                    train_files=files["train"], valid_files=files["valid"],
                    num_train=int(meta["windows"]["train"]), num_valid=int(meta["windows"]["valid"]))


def make_dataset(files, num_steps: int, batch_size: int, shuffle: bool, seed: int = 0,
                 num_windows: int | None = None) -> tf.data.Dataset:
    """TFRecord windows → batches of (inputs [B, T], targets [B, T]) int32, targets shifted by one."""
    spec = {"tokens": tf.io.FixedLenFeature([num_steps + 1], tf.int64)}

    def split(batch):
        tokens = tf.cast(tf.io.parse_example(batch, spec)["tokens"], tf.int32)  # [B, T+1]
        return tokens[:, :-1], tokens[:, 1:]

    ds = tf.data.TFRecordDataset(list(files))
    if num_windows:  # lets Keras show progress and know the epoch length
        ds = ds.apply(tf.data.experimental.assert_cardinality(num_windows))
    ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(200_000, seed=seed, reshuffle_each_iteration=True)
    options = tf.data.Options()  # multi-worker: shard batches, not files (a split may be one file)
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.batch(batch_size).map(split, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(options)
