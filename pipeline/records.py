"""Windows of token ids → serialised tf.train.Example records → TFRecord files, without TensorFlow.

Beam workers write records directly (no TF import, no per-record proto objects): an Example with
one int64 feature `tokens` is a fixed protobuf layout whose only variable part is the packed varints.
Tests check the bytes equal `tf.train.Example(...).SerializeToString()` and that TF reads the files.
"""
from __future__ import annotations

import struct

import google_crc32c
import numpy as np

FEATURE = "tokens"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _packed_varints(windows: np.ndarray) -> list[bytes]:
    """[n, T] non-negative ids < 2**21 → per row, the concatenated varint encodings."""
    ids = windows.astype(np.uint32)
    if ids.size and int(ids.max()) < 128:
        return [row.astype(np.uint8).tobytes() for row in ids]
    if ids.size and int(ids.max()) >= 1 << 21:
        raise ValueError("token id too large for the record encoder (>= 2**21)")
    b0 = (ids & 0x7F) | np.where(ids >= 1 << 7, 0x80, 0)
    b1 = ((ids >> 7) & 0x7F) | np.where(ids >= 1 << 14, 0x80, 0)
    b2 = ids >> 14
    stacked = np.stack([b0, b1, b2], axis=-1).astype(np.uint8)  # [n, T, 3]
    keep = np.stack([np.ones_like(ids, bool), ids >= 1 << 7, ids >= 1 << 14], axis=-1)
    return [row[mask].tobytes() for row, mask in zip(stacked, keep)]


def serialize_windows(windows: np.ndarray) -> list[bytes]:
    """[n, T+1] token windows → serialised tf.train.Example, feature `tokens` (int64 list)."""
    key = _field(1, FEATURE.encode())
    records = []
    for varints in _packed_varints(windows):
        int64_list = _field(1, varints)              # Int64List.value (packed)
        feature = _field(3, int64_list)              # Feature.int64_list
        entry = _field(1, key + _field(2, feature))  # Features.feature map entry
        records.append(_field(1, entry))             # Example.features
    return records


def tfrecord_file(windows: np.ndarray) -> bytes:
    """[n, T+1] windows → the bytes of a TFRecord file of their Examples.

    When every id is below 128 all records have the same layout, so the file is assembled with
    numpy in bulk (only the per-record CRC is a Python call); otherwise record by record.
    """
    if not windows.size or int(windows.max()) >= 128:
        return frame_records(serialize_windows(windows))
    n, width = windows.shape
    header = serialize_windows(np.zeros((1, width), np.uint8))[0][:-width]  # constant prefix
    body = np.concatenate([np.broadcast_to(np.frombuffer(header, np.uint8), (n, len(header))),
                           windows.astype(np.uint8)], axis=1)  # [n, record length]
    length = struct.pack("<Q", body.shape[1])
    data_crcs = np.frombuffer(b"".join(_masked_crc(row.tobytes()) for row in body), np.uint8).reshape(n, 4)
    prefix = np.frombuffer(length + _masked_crc(length), np.uint8)
    return np.concatenate([np.broadcast_to(prefix, (n, 12)), body, data_crcs], axis=1).tobytes()


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def frame_records(records: list[bytes]) -> bytes:
    """TFRecord framing: length, masked CRC of length, data, masked CRC of data."""
    parts = []
    for data in records:
        length = struct.pack("<Q", len(data))
        parts += [length, _masked_crc(length), data, _masked_crc(data)]
    return b"".join(parts)
