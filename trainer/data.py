"""tf.data input from the preprocessing stage's directory: windows → (inputs, targets) batches."""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from common import text as text_lib
from common import vocab as vocab_lib
from common.cli import UserError


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
    split: str = "holdout"                                      # holdout (windows per source) | d2l (one sequence)
    stride: int | None = None                                   # tokens between window starts

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
        config = meta.get("config", {})
        split = str(config.get("split", "holdout"))
        stride = 1 if split == "d2l" else int(config.get("stride") or num_steps)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{data_dir}: metadata.json or vocab.txt is damaged ({type(err).__name__}: {err}); "
                        f"run pipeline.preprocess again") from None
    if normalize not in text_lib.NORMALIZERS or tokenizer not in text_lib.TOKENIZERS:
        raise UserError(f"{data_dir}: metadata.json names normaliser {normalize!r} and tokenizer {tokenizer!r}; "
                        f"known are {', '.join(text_lib.NORMALIZERS)} and {', '.join(text_lib.TOKENIZERS)}")
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
                    shard_records=shard_records, split=split, stride=stride)


def check_records(info: DataInfo) -> None:
    """Reads every record once (TFRecord CRCs checked) before any training starts: a shard that is not a file,
    is truncated or corrupted, holds windows of another length than num_steps + 1 or token ids outside the
    vocabulary (an embedding lookup or one-hot would fail mid-epoch, or silently read zeros on some forms),
    or a count that disagrees with metadata.json, is a UserError naming the file."""
    for files, expected, split in ((info.train_files, info.num_train, "train"),
                                   (info.valid_files, info.num_valid, "valid")):
        count = 0
        for path in files:
            if not os.path.isfile(path):
                raise UserError(f"{path}: not a file; run pipeline.preprocess again")
            try:
                stats = _record_stats(path)
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
                first = " ".join(err.message.split())[:200]
                raise UserError(f"{path}: damaged TFRecord file ({first}); run pipeline.preprocess again") from None
            count += stats["records"]
            if stats["records"] and not stats["shortest"] == stats["longest"] == info.num_steps + 1:
                raise UserError(f"{path}: windows of {stats['shortest']}..{stats['longest']} tokens, metadata.json "
                                f"says num_steps {info.num_steps} (windows of {info.num_steps + 1}); a shard from "
                                f"another preprocessing run? run pipeline.preprocess again")
            if stats["records"] and not 0 <= stats["smallest"] <= stats["largest"] < info.vocab_size:
                raise UserError(f"{path}: token ids {stats['smallest']}..{stats['largest']} outside the vocabulary "
                                f"of {info.vocab_size}; a shard from another preprocessing run? run "
                                f"pipeline.preprocess again")
        if count != expected:
            raise UserError(f"{info.data_dir}: {count} {split} windows in the records, metadata.json says {expected}; "
                            f"run pipeline.preprocess again")


def _record_stats(path: str) -> dict[str, int]:
    """Records, shortest/longest window and smallest/largest token id of one shard, in one pass."""
    spec = {"tokens": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)}
    big, small = tf.int64.max, tf.int64.min
    start = tuple(tf.constant(v, tf.int64) for v in (0, big, small, big, small))

    def fold(acc, batch):
        tokens = tf.io.parse_example(batch, spec)["tokens"]  # ragged [B, None]
        lengths, ids = tokens.row_lengths(), tokens.flat_values
        ids_min = tf.reduce_min(tf.concat([ids, [big]], 0))
        ids_max = tf.reduce_max(tf.concat([ids, [small]], 0))
        return (acc[0] + tf.size(lengths, tf.int64), tf.minimum(acc[1], tf.reduce_min(lengths)),
                tf.maximum(acc[2], tf.reduce_max(lengths)), tf.minimum(acc[3], ids_min), tf.maximum(acc[4], ids_max))

    records, shortest, longest, smallest, largest = tf.data.TFRecordDataset(path).batch(8192).reduce(start, fold)
    return {"records": int(records), "shortest": int(shortest), "longest": int(longest), "smallest": int(smallest),
            "largest": int(largest)}


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
    ds = ds.batch(batch_size).map(split).prefetch(PREFETCH_BATCHES)
    return ds.with_options(pipeline_options())


# Batches tf.data prepares ahead of the step that reads them (parsing one is a small fraction of a step).
PREFETCH_BATCHES = 2


def pipeline_options() -> tf.data.Options:
    """Options of every training and validation pipeline. Multi-worker runs shard batches, not files (a split may
    be one file). tf.data's autotuner is off: its background tuning competes for a small machine's cores with the
    step it should feed and has nothing to tune here (cached windows, one parse per batch, fixed prefetch).
    Measured on the book's run (2 cores, Intel Xeon; whole trainer.train processes alternating, 3 each, same
    numbers): 50.4 s with it off against 60.5 s on; training steps 32.4 against 39.4 s, epoch ends 1.2 against
    3.9 s."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.autotune.enabled = False
    return options


# ---- token streams: stateful training (truncated BPTT) and full-context evaluation ----

def files_by_source(files) -> dict[int, list[str]]:
    """Shards <split>-<source index>-<block>.tfrecord grouped by source, each group in block order."""
    groups: dict[int, list[str]] = {}
    for path in sorted(files):
        groups.setdefault(int(os.path.basename(path).split("-")[1]), []).append(path)
    return dict(sorted(groups.items()))


def read_windows(files, num_steps: int) -> np.ndarray:
    """Every window of the files, in file and record order: [N, num_steps + 1] int32."""
    spec = {"tokens": tf.io.FixedLenFeature([num_steps + 1], tf.int64)}
    ds = tf.data.TFRecordDataset(list(files)).batch(65536).map(lambda b: tf.io.parse_example(b, spec)["tokens"])
    parts = [batch.numpy().astype(np.int32) for batch in ds]
    return np.concatenate(parts) if parts else np.zeros((0, num_steps + 1), np.int32)


def split_streams(info: DataInfo, split: str) -> list[np.ndarray]:
    """Each source's token stream of a split ("train" or "valid"), rebuilt from the windows preprocessing wrote.

    Windows start every `stride` tokens, so the stream is each window's first `stride` tokens, then the
    last window whole: the records are the one copy of the data, read by the one input pipeline. The
    d2l split is one sequence (source 0). A stride longer than a window leaves gaps: no stream.
    """
    if info.stride > info.num_steps + 1:
        raise UserError(f"{info.data_dir}: windows every {info.stride} tokens leave gaps between windows of "
                        f"{info.num_steps + 1}; a token stream needs --stride <= num_steps + 1 "
                        f"(run pipeline.preprocess again)")
    files = info.train_files if split == "train" else info.valid_files
    streams = []
    for paths in files_by_source(files).values():
        windows = read_windows(paths, info.num_steps)                     # [N, T + 1]
        if len(windows):
            streams.append(np.concatenate([windows[:, :info.stride].reshape(-1), windows[-1, info.stride:]]))
    return streams


def lanes(stream: np.ndarray, batch_size: int, num_steps: int) -> np.ndarray:
    """[n] tokens → [batch_size, lane_len + 1]: batch_size contiguous lanes, lane b starting at b · lane_len,
    lane_len a multiple of num_steps (the book's sequential partitioning). Each lane's last token is the
    next lane's first, so every token of the used stream is predicted exactly once per epoch."""
    lane_len = (len(stream) - 1) // batch_size // num_steps * num_steps
    starts = np.arange(batch_size) * lane_len
    return stream[starts[:, None] + np.arange(lane_len + 1)]


def stateful_batches(streams, batch_size: int, num_steps: int):
    """Streams → (ids [N, B, T], targets [N, B, T], reset [N]): for each stream in order, consecutive
    num_steps windows of its lanes; reset is 1 on the first batch of each stream (state starts from zero)."""
    ids, targets, reset = [], [], []
    for stream in streams:
        lane = lanes(stream, batch_size, num_steps)                          # [B, L + 1]
        for k, start in enumerate(range(0, lane.shape[1] - 1, num_steps)):
            ids.append(lane[:, start:start + num_steps])
            targets.append(lane[:, start + 1:start + num_steps + 1])
            reset.append(1.0 if k == 0 else 0.0)
    if not ids:
        longest = max((len(s) for s in streams), default=0)
        raise UserError(f"--stateful: --batch-size {batch_size} lanes of {num_steps} steps need "
                        f"{batch_size * num_steps + 1} tokens in a source; the longest has {longest}")
    return np.stack(ids), np.stack(targets), np.asarray(reset, np.float32)


def make_stateful_dataset(info: DataInfo, batch_size: int) -> tuple[tf.data.Dataset, int]:
    """(batches, their number): the training stream as ({"ids" [B, T], "reset" [B]}, targets [B, T]) batches,
    in lane order (no shuffle: row b of batch k + 1 continues row b of batch k).

    Rows are batched by a batch op, so a tf.distribute strategy splits every global batch into the same
    contiguous row ranges per replica (and per worker): each replica keeps its lanes from batch to batch."""
    ids, targets, reset = stateful_batches(split_streams(info, "train"), batch_size, info.num_steps)
    count = len(ids)
    reset_rows = np.repeat(reset[:, None], batch_size, axis=1)              # [N, B]
    rows = ({"ids": ids.reshape(count * batch_size, -1), "reset": reset_rows.reshape(-1)},
            targets.reshape(count * batch_size, -1))
    ds = tf.data.Dataset.from_tensor_slices(rows).batch(batch_size, drop_remainder=True)
    return ds.prefetch(PREFETCH_BATCHES).with_options(pipeline_options()), count
