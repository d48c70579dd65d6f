"""Exporting as a library: a trained model directory → a SavedModel version for TensorFlow Serving, with its
generation and scoring signatures, proved in the session loader TF Serving uses before it is published."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import numpy as np

from common import atomic, cli, locks, paths
from common import vocab as vocab_lib
from common.cli import UserError
from serving.layout import LIMITS_FILE, SOURCE_FINGERPRINT, WARMUP_FILE, read_warmup, versions
from trainer.config import DEFAULT_LIMITS, ServingLimits

SIGNATURES = ("serving_default", "sample", "score")


MAX_MODEL_BYTES = 8 << 30  # checked before loading: the largest model.keras export reads
FORBIDDEN_OPS = ("PyFunc", "PyFuncStateless", "EagerPyFunc")


def load_trained(model_dir: str):
    """(keras model, vocab, run_config) of a finished training run; UserError if incomplete."""
    import keras

    import trainer.model  # noqa: F401  registers the custom layers for loading

    files = {n: os.path.join(model_dir, n) for n in ("model.keras", "vocab.txt", "run_config.json")}
    for name, path in files.items():
        if not os.path.exists(path):
            raise UserError(f"{model_dir}: no {name}; has trainer.train finished there?")
        if not os.path.isfile(path):  # a link to /dev/zero or a FIFO would be read for ever
            raise UserError(f"{path}: not a regular file")
    if os.path.getsize(files["model.keras"]) > MAX_MODEL_BYTES:
        raise UserError(f"{files['model.keras']}: larger than {MAX_MODEL_BYTES >> 30} GiB; not a model this "
                        "pipeline trained")
    run_config = cli.read_json(files["run_config.json"], "a run's configuration")
    try:
        vocab = vocab_lib.read_vocab(files["vocab.txt"])
        trained_sha256 = run_config["vocab_sha256"]
        missing = [key for key in ("normalize", "tokenizer") if key not in run_config]
        if missing:
            raise KeyError(", ".join(missing))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{model_dir}: run_config.json or vocab.txt is damaged ({type(err).__name__}: {err})") from None
    if vocab_lib.vocab_sha256(vocab) != trained_sha256:
        raise UserError(f"{model_dir}: vocab.txt does not match the vocabulary the model was trained with")
    try:
        model = keras.models.load_model(files["model.keras"], compile=False, safe_mode=True)
    except Exception as err:  # zip, HDF5 or config errors: all mean the same to the user
        raise UserError(f"{files['model.keras']}: cannot load ({type(err).__name__}: "
                        f"{' '.join(str(err).split())[:200]})") from None
    return model, vocab, run_config


def read_saved_model_proto(saved_model_dir: str):
    """saved_model.pb parsed: what saved_model_cli inspects (signature defs, graph, function library)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def graph_op_types(saved_model_dir: str) -> set[str]:
    """Every op type in a SavedModel's graph and function library (calls to library functions excluded)."""
    types, functions = set(), set()
    for meta in read_saved_model_proto(saved_model_dir).meta_graphs:
        types |= {node.op for node in meta.graph_def.node}
        for fn in meta.graph_def.library.function:
            functions.add(fn.signature.name)
            types |= {node.op for node in fn.node_def}
    return types - functions


def check_portable(saved_model_dir: str) -> None:
    """Refuses graphs TF Serving's C++ runtime cannot run: Python callbacks, cuDNN-only kernels, unknown ops,
    and this project's training-only native kernels (registered in this process, absent from TF Serving)."""
    from tensorflow.python.framework import op_def_registry

    bad = sorted(t for t in graph_op_types(saved_model_dir)
                 if t in FORBIDDEN_OPS or "Cudnn" in t or t.startswith("DeepRnn") or op_def_registry.get(t) is None)
    if bad:
        raise UserError(f"export would contain ops the C++ runtime cannot serve: {', '.join(bad)}")


def warmup_requests(model_name: str) -> list:
    """PredictRequests for every signature, in the shapes both REST formats produce: scalars shared by all
    rows (columnar `inputs`, gRPC) and one value per row (`instances`, which TF Serving stacks)."""
    from serving.grpc_client import predict_request

    scalar_sample = {"temperature": 1.0, "top_k": 0, "seed": 0}
    row_sample = {"temperature": [1.0, 0.5], "top_k": [0, 3], "seed": [0, 1]}
    cases = [("serving_default", {"prefix": ["it has"], "num_chars": 20}),
             ("serving_default", {"prefix": ["it has", "the time"], "num_chars": [20, 5]}),
             ("sample", {"prefix": ["it has"], "num_chars": 20, **scalar_sample}),
             ("sample", {"prefix": ["it has", "the time"], "num_chars": [20, 0], **row_sample}),
             ("score", {"text": ["it has been a long time", "the time traveller"]})]
    return [predict_request(model_name, signature, **inputs) for signature, inputs in cases]


def write_warmup(saved_model_dir: str, model_name: str) -> None:
    """The requests TF Serving replays at load time, so the first client does not pay for tracing."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    os.makedirs(os.path.join(saved_model_dir, "assets.extra"), exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(saved_model_dir, WARMUP_FILE)) as writer:
        for req in warmup_requests(model_name):
            writer.write(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString())


def write_models_config(export_base: str) -> str:
    """EXPORT_BASE/models.config in TF Serving's text format (written by protobuf's own text_format, so any path
    is quoted as TF Serving parses it), listing every model under the base."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for name in sorted(os.listdir(export_base)):
        base = os.path.join(os.path.abspath(export_base), name)
        if os.path.isdir(base) and versions(base):
            config.model_config_list.config.add(name=name, base_path=base, model_platform="tensorflow")
    path = os.path.join(export_base, "models.config")
    atomic.write_text(path, text_format.MessageToString(config))
    return path


def check_model_name(model_name: str) -> None:
    """A model name is one plain path component: it becomes a directory under the export base."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", model_name) or model_name in (".", ".."):
        raise UserError(f"--model-name {model_name!r}: use letters, digits, '_', '.', '-', "
                        "not starting with '.' or '-'")


def _outputs_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind in "fc":
        return a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
    return a.shape == b.shape and np.array_equal(a, b)


def run_in_session_loader(saved_model_dir: str, requests) -> list[dict]:
    """Each PredictRequest run the way TF Serving runs it: the session-based SavedModelBundle, inputs fed and
    outputs fetched by the signature's tensor names (serving.servable.Servable, which the stand-in serves with)."""
    from serving.servable import Servable

    servable = Servable(saved_model_dir, version=0)
    try:
        return [servable.predict(req.model_spec.signature_name, dict(req.inputs)) for req in requests]
    finally:
        servable.close()


def run_in_tf2_loader(saved_model_dir: str, requests) -> list[dict]:
    """The same requests through tf.saved_model.load's concrete signature functions."""
    import tensorflow as tf

    from serving import tensors

    signatures = tf.saved_model.load(saved_model_dir).signatures
    return [{k: v.numpy() for k, v in signatures[req.model_spec.signature_name or "serving_default"](
        **{k: tf.constant(tensors.to_numpy(v)) for k, v in req.inputs.items()}).items()} for req in requests]


def validate_version(saved_model_dir: str) -> int:
    """TFX InfraValidator's idea: every warm-up request must run in the session loader TF Serving uses and
    give what the TF2 loader gives. Returns the number of requests checked; UserError says what failed."""
    import tensorflow as tf

    requests = read_warmup(saved_model_dir)
    if not requests:
        raise UserError(f"{saved_model_dir}: no warm-up requests to validate with")
    from serving.servable import ServingError

    try:
        in_session = run_in_session_loader(saved_model_dir, requests)
    except (ServingError, tf.errors.OpError, KeyError, ValueError, RuntimeError) as err:
        first = " ".join(str(err).split())[:400]
        raise UserError(f"export refused: TF Serving's session loader cannot run it: {first}") from None
    for req, session_out, tf2_out in zip(requests, in_session, run_in_tf2_loader(saved_model_dir, requests)):
        differ = sorted(k for k in tf2_out if k not in session_out or not _outputs_equal(session_out[k], tf2_out[k]))
        if differ or set(session_out) != set(tf2_out):
            raise UserError(f"export refused: signature {req.model_spec.signature_name!r} gives different "
                            f"{', '.join(differ) or 'outputs'} in the session loader than in the TF2 loader")
    return len(requests)


def export_model(model_dir: str, export_base: str, model_name: str = "deep_rnn",
                 version: int | None = None, limits: ServingLimits = DEFAULT_LIMITS,
                 source_fingerprint: str | None = None) -> str:
    """Exports RUN/model as a new version, published only once it runs in TF Serving's loader; returns its directory."""
    cli.quiet_tensorflow()
    check_model_name(model_name)
    for path, flag in ((model_dir, "--model-dir"), (export_base, "--export-base")):
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"{flag} {path}: exists and is not a directory")
    models_config = os.path.join(export_base, "models.config")
    if os.path.lexists(models_config) and not os.path.isfile(models_config):
        raise UserError(f"{models_config}: exists and is not a file; it is where the export lists its models")
    model, vocab, run_config = load_trained(model_dir)
    paths.make_output_dir(export_base, "--export-base")  # made once there is a model to put in it
    model_base = os.path.join(export_base, model_name)
    os.makedirs(model_base, exist_ok=True)
    with locks.exclusive(model_base, "serving.export"):  # two exports must not pick the same version
        return _export_locked(model, vocab, run_config, model_dir, export_base, model_base, version, limits,
                              source_fingerprint)


def _export_locked(model, vocab, run_config, model_dir, export_base, model_base, version, limits,
                   source_fingerprint) -> str:
    import tensorflow as tf

    from trainer.generate import TextModel

    model_name = os.path.basename(model_base)
    existing = versions(model_base)
    version = version or (existing[-1] + 1 if existing else 1)
    final = os.path.join(model_base, str(version))
    if os.path.exists(final):
        raise UserError(f"{final} already exists; versions are immutable, pick another --version")
    module = TextModel(model, vocab, run_config["normalize"], run_config["tokenizer"], limits)
    atomic.clean_stale(os.path.join(model_base, ".staging"))
    tmp = atomic.temp_path(os.path.join(model_base, ".staging"))  # not an integer: servers ignore it
    try:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.greedy,
                                                     "sample": module.sample, "score": module.score})
        write_warmup(tmp, model_name)
        shutil.copy(os.path.join(model_dir, "vocab.txt"), os.path.join(tmp, "assets.extra", "vocab.txt"))
        shutil.copy(os.path.join(model_dir, "run_config.json"), os.path.join(tmp, "assets.extra", "run_config.json"))
        with open(os.path.join(tmp, LIMITS_FILE), "w") as f:
            json.dump(dataclasses.asdict(limits), f, indent=2)
        if source_fingerprint:
            with open(os.path.join(tmp, SOURCE_FINGERPRINT), "w") as f:
                f.write(source_fingerprint)
        check_portable(tmp)
        validate_version(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_models_config(export_base)
    return final
