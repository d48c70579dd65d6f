"""Export stage: RUN/model → EXPORT_BASE/<model_name>/<version>/ SavedModel + EXPORT_BASE/models.config.

    python -m serving.export --model-dir runs/x/model --export-base runs/x/export
The version is written beside its final place and renamed in, so a server polling the base path
never sees half a version. Signatures: serving_default (greedy), sample, score (see DESIGN.md).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from typing import Sequence

from pipeline import atomic, cli, vocab as vocab_lib
from pipeline.cli import UserError

SIGNATURES = ("serving_default", "sample", "score")
FORBIDDEN_OPS = ("PyFunc", "PyFuncStateless", "EagerPyFunc")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
SOURCE_FINGERPRINT = os.path.join("assets.extra", "source_fingerprint")


def parse_args(argv):
    p = cli.ArgumentParser(prog="serving.export", description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True, help="output directory of trainer.train")
    p.add_argument("--export-base", required=True)
    p.add_argument("--model-name", default="deep_rnn")
    p.add_argument("--version", type=cli.positive_int, help="default: one more than the newest")
    p.add_argument("--max-chars", type=cli.positive_int, default=1000, help="largest num_chars accepted")
    p.add_argument("--source-fingerprint", help="recorded in the version, so pipelines can skip re-exports")
    return p.parse_args(argv)


def versions(model_base: str) -> list[int]:
    if not os.path.isdir(model_base):
        return []
    return sorted(int(d) for d in os.listdir(model_base) if d.isdigit()
                  and os.path.exists(os.path.join(model_base, d, "saved_model.pb")))


def load_trained(model_dir: str):
    """(keras model, vocab, run_config) of a finished training run; UserError if incomplete."""
    import keras

    import trainer.model  # noqa: F401  registers the custom layers for loading

    paths = {n: os.path.join(model_dir, n) for n in ("model.keras", "vocab.txt", "run_config.json")}
    for name, path in paths.items():
        if not os.path.exists(path):
            raise UserError(f"{model_dir}: no {name}; has trainer.train finished there?")
    with open(paths["run_config.json"]) as f:
        run_config = json.load(f)
    vocab = vocab_lib.read_vocab(paths["vocab.txt"])
    if vocab_lib.vocab_sha256(vocab) != run_config["vocab_sha256"]:
        raise UserError(f"{model_dir}: vocab.txt does not match the vocabulary the model was trained with")
    model = keras.models.load_model(paths["model.keras"], compile=False, safe_mode=True)
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
    """Refuses graphs TF Serving's C++ runtime cannot run: Python callbacks, cuDNN-only kernels, unknown ops."""
    from tensorflow.python.framework import op_def_registry

    bad = sorted(t for t in graph_op_types(saved_model_dir)
                 if t in FORBIDDEN_OPS or "Cudnn" in t or op_def_registry.get(t) is None)
    if bad:
        raise UserError(f"export would contain ops the C++ runtime cannot serve: {', '.join(bad)}")


def write_warmup(saved_model_dir: str, model_name: str) -> None:
    """A few requests TF Serving replays at load time, so the first client does not pay for tracing."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from serving.client import predict_request

    requests = []
    for signature, inputs in (("serving_default", {"prefix": ["it has"], "num_chars": 20}),
                              ("sample", {"prefix": ["it has"], "num_chars": 20, "temperature": 1.0,
                                          "top_k": 0, "seed": 0}),
                              ("score", {"text": ["it has been a long time"]})):
        req = predict_request(model_name, signature, **inputs)
        requests.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=req)).SerializeToString())
    os.makedirs(os.path.join(saved_model_dir, "assets.extra"), exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(saved_model_dir, WARMUP_FILE)) as writer:
        for data in requests:
            writer.write(data)


def write_models_config(export_base: str) -> str:
    """EXPORT_BASE/models.config in TF Serving's text format, listing every model under the base."""
    entries = []
    for name in sorted(os.listdir(export_base)):
        base = os.path.join(os.path.abspath(export_base), name)
        if os.path.isdir(base) and versions(base):
            entries.append(f'  config {{\n    name: "{name}"\n    base_path: "{base}"\n'
                           f'    model_platform: "tensorflow"\n  }}\n')
    path = os.path.join(export_base, "models.config")
    atomic.write_text(path, "model_config_list {\n" + "".join(entries) + "}\n")
    return path


def export_model(model_dir: str, export_base: str, model_name: str = "deep_rnn",
                 version: int | None = None, max_chars: int = 1000, source_fingerprint: str | None = None) -> str:
    """Exports RUN/model as a new version; returns the version's directory."""
    cli.quiet_tensorflow()
    import tensorflow as tf

    from trainer.generate import TextModel

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_name):
        raise UserError(f"--model-name {model_name!r}: use letters, digits, '_', '.', '-'")
    model, vocab, run_config = load_trained(model_dir)
    model_base = os.path.join(export_base, model_name)
    os.makedirs(model_base, exist_ok=True)
    existing = versions(model_base)
    version = version or (existing[-1] + 1 if existing else 1)
    final = os.path.join(model_base, str(version))
    if os.path.exists(final):
        raise UserError(f"{final} already exists; versions are immutable, pick another --version")
    module = TextModel(model, vocab, run_config["normalize"], run_config["tokenizer"], max_chars=max_chars)
    atomic.clean_stale(os.path.join(model_base, ".staging"))
    tmp = atomic.temp_path(os.path.join(model_base, ".staging"))  # not an integer: servers ignore it
    try:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.greedy,
                                                     "sample": module.sample, "score": module.score})
        write_warmup(tmp, model_name)
        shutil.copy(os.path.join(model_dir, "vocab.txt"), os.path.join(tmp, "assets.extra", "vocab.txt"))
        shutil.copy(os.path.join(model_dir, "run_config.json"), os.path.join(tmp, "assets.extra", "run_config.json"))
        if source_fingerprint:
            with open(os.path.join(tmp, SOURCE_FINGERPRINT), "w") as f:
                f.write(source_fingerprint)
        check_portable(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_models_config(export_base)
    return final


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    path = export_model(args.model_dir, args.export_base, args.model_name, args.version, args.max_chars,
                        args.source_fingerprint)
    print(json.dumps({"exported": os.path.abspath(path), "signatures": list(SIGNATURES)}))


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
