"""The on-disk layout of an export base that the exporter writes and the server reads: version folders
and the files beside each SavedModel (limits, warm-up requests, source fingerprint)."""
from __future__ import annotations

import os
import re

LIMITS_FILE = os.path.join("assets.extra", "serving_limits.json")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
SOURCE_FINGERPRINT = os.path.join("assets.extra", "source_fingerprint")


INT64_MAX = 2**63 - 1


def version_number(name: str) -> int | None:
    """TF Serving's rule for a version folder: a name of ASCII digits (zero-padded too: `00000123` is version 123)
    whose value fits a non-negative int64; any other name is not a version."""
    if not re.fullmatch(r"[0-9]+", name):
        return None
    number = int(name)
    return number if number <= INT64_MAX else None


def version_dirs(model_base: str) -> dict[int, str]:
    """Version → its folder, for every folder under model_base that is a version and holds a SavedModel (a
    half-written one has none yet, so it never displaces the version being served). Of two folders with one
    number (`1` and `01`) the first by name counts."""
    try:
        names = sorted(os.listdir(model_base))
    except OSError:
        return {}
    found: dict[int, str] = {}
    for name in names:
        number, path = version_number(name), os.path.join(model_base, name)
        if number is not None and number not in found and any(
                os.path.isfile(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")):
            found[number] = path
    return found


def versions(model_base: str) -> list[int]:
    """The versions under model_base, oldest first (see version_dirs)."""
    return sorted(version_dirs(model_base))


def version_path(model_base: str, version: int) -> str:
    """The folder of `version` (zero-padded or not); model_base/<version> for one that does not exist yet."""
    return version_dirs(model_base).get(version, os.path.join(model_base, str(version)))


def read_warmup(saved_model_dir: str) -> list:
    """The PredictRequests in a version's warm-up file (none when it has no file)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(saved_model_dir, WARMUP_FILE)
    if not os.path.exists(path):
        return []
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
            for record in tf.data.TFRecordDataset(path)]
