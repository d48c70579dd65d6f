"""tf.data input from the preprocessing stage's directory: windows → (inputs, targets) batches."""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field

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
    source_paths: tuple[str, ...] = ()                          # metadata.json's sources, in source-index order
    shard_records: dict[str, int] = field(default_factory=dict)  # shard file name → windows in it

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
    try:
        with open(paths["metadata.json"]) as f:
            meta = json.load(f)
        vocab = vocab_lib.read_vocab(paths["vocab.txt"])
        num_steps, vocab_size = int(meta["num_steps"]), int(meta["vocab_size"])
        num_train, num_valid = int(meta["windows"]["train"]), int(meta["windows"]["valid"])
        normalize, tokenizer = str(meta["normalize"]), str(meta["tokenizer"])
        source_paths = tuple(str(source["path"]) for source in meta.get("sources", []))
        shard_records = {str(shard["file"]): int(shard["records"]) for shard in meta.get("shards", [])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{data_dir}: metadata.json or vocab.txt is damaged ({type(err).__name__}: {err}); "
                        f"run pipeline.preprocess again") from None
    if num_steps < 1 or num_train < 1 or num_valid < 1:
        raise UserError(f"{data_dir}: metadata.json lists no windows (num_steps {num_steps}, "
                        f"train {num_train}, valid {num_valid}); run pipeline.preprocess again")
    files = {split: tuple(sorted(glob.glob(os.path.join(data_dir, f"{split}-*.tfrecord"))))
             for split in ("train", "valid")}
    for split, found in files.items():
        if not found:
            raise UserError(f"{data_dir}: no {split}-*.tfrecord records")
    if len(vocab) != vocab_size:
        raise UserError(f"{data_dir}: vocab.txt has {len(vocab)} tokens, metadata says {vocab_size}")
    return DataInfo(data_dir=data_dir, vocab=tuple(vocab), num_steps=num_steps, normalize=normalize,
                    tokenizer=tokenizer, train_files=files["train"], valid_files=files["valid"],
                    num_train=num_train, num_valid=num_valid, source_paths=source_paths,
                    shard_records=shard_records)


def check_records(info: DataInfo) -> None:
    """Reads every record once (TFRecord CRCs checked): a truncated or corrupted shard, or a count that
    disagrees with metadata.json, is a UserError naming the file before any training starts."""
    for files, expected, split in ((info.train_files, info.num_train, "train"),
                                   (info.valid_files, info.num_valid, "valid")):
        count = 0
        for path in files:
            try:
                count += int(tf.data.TFRecordDataset(path).reduce(0, lambda n, _: n + 1))
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
                first = " ".join(err.message.split())[:200]
                raise UserError(f"{path}: damaged TFRecord file ({first}); run pipeline.preprocess again") from None
        if count != expected:
            raise UserError(f"{info.data_dir}: {count} {split} windows in the records, metadata.json says {expected}; "
                            f"run pipeline.preprocess again")


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
