"""The on-disk layout of an export base that the exporter writes and the server reads: version folders
and the files beside each SavedModel (limits, warm-up requests, source fingerprint)."""
from __future__ import annotations

import os

LIMITS_FILE = os.path.join("assets.extra", "serving_limits.json")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
SOURCE_FINGERPRINT = os.path.join("assets.extra", "source_fingerprint")


def versions(model_base: str) -> list[int]:
    if not os.path.isdir(model_base):
        return []
    return sorted(int(d) for d in os.listdir(model_base) if d.isdigit()
                  and os.path.exists(os.path.join(model_base, d, "saved_model.pb")))


def read_warmup(saved_model_dir: str) -> list:
    """The PredictRequests in a version's warm-up file (none when it has no file)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(saved_model_dir, WARMUP_FILE)
    if not os.path.exists(path):
        return []
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
            for record in tf.data.TFRecordDataset(path)]
