"""Loaded SavedModel versions and the registry that follows TF Serving's model config and version policies.

A version is loaded the way tensorflow_model_server loads it: the session-based SavedModelBundle
(TF1 loader), inputs fed and outputs fetched by the signature's tensor names, warm-up records replayed
at load and the load failed on the first error. A version that fails to load is remembered with a
fingerprint of its files and not retried until they change (with a growing back-off), and what the failed
load allocated is released, so a broken directory cannot grow the server's memory.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import os
import re
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.python.util import deprecation

from serving import layout, tensors
from trainer import compat

log = logging.getLogger("serving")

# ModelVersionStatus.State values (tensorflow_serving/apis/get_model_status.proto)
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50


class ServingError(Exception):
    """A request failure with the gRPC status TF Serving would return."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


class Servable:
    """One version in its own graph and session, validating requests like TF Serving's predict_util."""

    def __init__(self, path: str, version: int, session_config: tf.compat.v1.ConfigProto | None = None):
        self.path, self.version = path, version
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=session_config)
        try:
            with deprecation.silence():
                meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
        except BaseException:
            self.close()
            raise
        self.signature_defs = dict(meta_graph.signature_def)  # all of them, as TF Serving's metadata lists them

    def close(self) -> None:
        self.session.close()
        self.graph = None

    def signature(self, name: str):
        """The SignatureDef a request names; FAILED_PRECONDITION with TF Serving's words if there is none."""
        name = name or "serving_default"
        if name not in self.signature_defs:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
        return self.signature_defs[name]

    def predict(self, signature_name: str, inputs: dict, output_filter=()) -> dict[str, np.ndarray]:
        """inputs: name → TensorProto (gRPC) or numpy array (REST, already typed); returns name → array."""
        signature = self.signature(signature_name)
        sent, wanted = set(inputs), set(signature.inputs)
        if sent != wanted:
            raise invalid(f"input size does not match signature: {len(sent)}!={len(wanted)} "
                          f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
                          f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                          f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.")
        feeds = {}
        for name, value in inputs.items():
            info = signature.inputs[name]
            if not isinstance(value, np.ndarray):
                if value.dtype != info.dtype:  # the session's own check, which TF Serving passes on
                    raise invalid(f"Expects arg[{sorted(inputs).index(name)}] to be {_dtype_name(info.dtype)} "
                                  f"but {_dtype_name(value.dtype)} is provided")
                try:
                    value = tensors.to_numpy(value)
                except ValueError as err:
                    raise invalid(f"tensor parsing error: {name}: {err}") from None
            feeds[info.name] = value  # no shape check of our own: TF Serving leaves shapes to the session
        if len(set(output_filter)) != len(output_filter):
            duplicate = next(k for k in output_filter if list(output_filter).count(k) > 1)
            raise invalid(f"duplicate output tensor alias: {duplicate}")
        unknown = sorted(set(output_filter) - set(signature.outputs))
        if unknown:
            raise invalid(f"output tensor alias not found in signature: {unknown[0]} Outputs expected to be in "
                          f"the set {{{','.join(sorted(signature.outputs))}}}.")
        names = sorted(output_filter or signature.outputs)
        try:
            values = compat.run_session_as_tf_serving(self.session, [signature.outputs[k].name for k in names],
                                                      feeds)
        except tf.errors.OpError as err:
            raise ServingError(_GRPC_CODES.get(err.error_code, grpc.StatusCode.INTERNAL),
                               _first_line(err.message)) from None
        return dict(zip(names, values))

    def warm_up(self) -> int:
        """Replays assets.extra/tf_serving_warmup_requests, as TF Serving does at load; raises on the first error."""
        requests = layout.read_warmup(self.path)
        for request in requests:
            self.predict(request.model_spec.signature_name, dict(request.inputs))
        return len(requests)


def _dtype_name(enum: int) -> str:
    """TensorFlow's DataTypeString (DT_FLOAT → float); a number no DataType has (a client's garbage) is named
    as a number."""
    try:
        return types_pb2.DataType.Name(enum)[3:].lower()
    except ValueError:
        return f"unknown DataType {enum}"


def _first_line(message: str) -> str:
    """The line of a TF error that says what was wrong (an assertion's message), not "Graph execution error"."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    asserts = [ln for ln in lines if "assertion failed" in ln or "must" in ln]
    useful = [ln for ln in lines if not ln.startswith(("Graph execution error", "Detected at node", "[["))]
    return (asserts or useful or lines or ["error"])[0][:500]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One entry of TF Serving's model_config_list: name, base path, version policy and labels."""

    name: str
    base_path: str
    policy: str = "latest"            # latest | all | specific
    num_versions: int = 1             # latest: how many of the newest versions to serve
    versions: tuple[int, ...] = ()    # specific: which versions
    labels: tuple[tuple[str, int], ...] = ()

    def aspired(self, on_disk: list[int]) -> list[int]:
        if self.policy == "all":
            return list(on_disk)
        if self.policy == "specific":
            return [v for v in on_disk if v in self.versions]
        return list(on_disk[-self.num_versions:])


def read_model_config_file(path: str) -> list[ModelEntry]:
    """TF Serving's --model_config_file (ModelServerConfig text proto) → ModelConfigs."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    with open(path) as f:
        try:
            text_format.Parse(f.read(), config)
        except text_format.ParseError as err:  # in the words of protobuf's C++ parser, which TF Serving logs
            where = re.match(r"(\d+):(\d+) : ", str(err))
            message = str(err)[where.end():] if where else str(err)
            position = f"{where.group(1)}:{where.group(2)}: " if where else ""
            raise ValueError(f"Error parsing text-format {config.DESCRIPTOR.full_name}: {position}{message}") from None
    models = []
    for entry in config.model_config_list.config:
        base = entry.base_path if os.path.isabs(entry.base_path) else os.path.join(os.path.dirname(path),
                                                                                   entry.base_path)
        policy = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        models.append(ModelEntry(
            name=entry.name, base_path=base, policy=policy,
            num_versions=max(1, entry.model_version_policy.latest.num_versions) if policy == "latest" else 1,
            versions=tuple(entry.model_version_policy.specific.versions),
            labels=tuple(sorted(entry.version_labels.items()))))
    return models


def version_fingerprint(path: str) -> tuple:
    """(relative path, size, mtime) of every file in a version directory: changes when the files do."""
    entries = []
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


@dataclasses.dataclass
class _Failure:
    fingerprint: tuple
    retry_after: float
    delay: float


class Model:
    """The versions of one model: loads what the policy aspires to, unloads the rest once a newer one serves."""

    MAX_BACKOFF_S = 300.0

    def __init__(self, config: ModelEntry, session_config=None, poll_seconds: float = 1.0):
        self.config, self.session_config, self.poll_seconds = config, session_config, poll_seconds
        self.available: dict[int, Servable] = {}   # replaced whole, never mutated: readers need no lock
        self.states: dict[int, tuple[int, str]] = {}  # version → (state, error message), END ones kept
        self.failures: dict[int, _Failure] = {}

    def unload_all(self) -> None:
        """Every version unloaded (the model left the config)."""
        available, self.available = self.available, {}
        for version in available:
            self.states[version] = (END, "")

    def poll_once(self) -> None:
        on_disk = layout.versions(self.config.base_path)
        aspired = self.config.aspired(on_disk)
        available = dict(self.available)
        for version in aspired:
            if version not in available:
                servable = self._try_load(version)
                if servable is not None:
                    available[version] = servable
        if any(v in available for v in aspired) or not aspired:  # availability first: unload only when replaced
            for version in [v for v in available if v not in aspired]:
                del available[version]
                self.states[version] = (END, "")
                log.info("unloaded %s version %s", self.config.name, version)
        self.available = available
        for version in list(self.failures):
            if version not in on_disk:  # the directory went away: forget it
                del self.failures[version]

    def _try_load(self, version: int) -> Servable | None:
        path = layout.version_path(self.config.base_path, version)
        fingerprint = version_fingerprint(path)
        failure = self.failures.get(version)
        if failure and (failure.fingerprint == fingerprint or time.monotonic() < failure.retry_after):
            return None  # same files as the failed load, or still backing off
        self.states[version] = (LOADING, "")
        servable = None
        try:
            servable = Servable(path, version, self.session_config)
            warmed = servable.warm_up()
        except Exception as err:  # a broken version must not take the server down
            if servable is not None:
                servable.close()
            servable = None
            gc.collect()  # the failed graph and session go now, not at some later collection
            delay = min(self.MAX_BACKOFF_S, 2 * failure.delay if failure else max(self.poll_seconds, 1.0))
            self.failures[version] = _Failure(fingerprint, time.monotonic() + delay, delay)
            message = " ".join(str(err).split())[:500]
            self.states[version] = (END, message)
            log.error("cannot load %s version %s (not retried until its files change): %s",
                      self.config.name, version, message)
            return None
        self.failures.pop(version, None)
        self.states[version] = (AVAILABLE, "")
        log.info("serving %s version %s (%d warm-up requests)", self.config.name, version, warmed)
        return servable

    def resolve(self, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a ModelSpec names, with TF Serving's errors."""
        if version is not None and label:
            raise invalid(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
        if label:
            labels = dict(self.config.labels)
            if label not in labels:
                raise invalid(f"Unrecognized servable version label: {label}")
            version = labels[label]
        available = self.available
        if version is None:
            if not available:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Latest({self.config.name})")
            return available[max(available)]
        if version not in available:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({self.config.name}, {version})")
        return available[version]


class ModelRegistry:
    """Every configured model, polled for new and removed versions on one background thread."""

    def __init__(self, configs: list[ModelEntry], poll_seconds: float = 1.0, session_config=None,
                 config_source=None, config_poll_seconds: float = 0.0):
        self.models = {c.name: Model(c, session_config, poll_seconds) for c in configs}
        self.poll_seconds, self.session_config = poll_seconds, session_config
        self.config_source, self.config_poll_seconds = config_source, config_poll_seconds  # () → configs
        self._config_due = time.monotonic() + config_poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="version-poller", daemon=True)

    def poll_once(self) -> None:
        if self.config_source is not None and self.config_poll_seconds and time.monotonic() >= self._config_due:
            self._config_due = time.monotonic() + self.config_poll_seconds
            try:
                self.apply_config(self.config_source())
            except Exception as err:  # TF Serving keeps serving what it has when a new config does not parse
                log.error("model config not applied (the running models stay): %s", " ".join(str(err).split())[:300])
        for model in list(self.models.values()):
            model.poll_once()

    def apply_config(self, configs: list[ModelEntry]) -> None:
        """A re-read model config takes effect: new models are added, dropped ones unloaded, and a model whose
        entry changed (policy, labels, base path) gets the new entry at its next poll."""
        if not configs:
            raise ValueError("the model config lists no model")
        models = {}
        for config in configs:
            current = self.models.get(config.name)
            if current is None:
                models[config.name] = Model(config, self.session_config, self.poll_seconds)
                log.info("model %s added by the model config", config.name)
            else:
                current.config = config
                models[config.name] = current
        dropped = [model for name, model in self.models.items() if name not in models]
        self.models = models  # replaced whole: readers need no lock
        for model in dropped:
            log.info("model %s removed by the model config", model.config.name)
            model.unload_all()

    def start(self) -> None:
        self.poll_once()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # the poller must survive anything a directory can do
                log.exception("version poll failed")

    def model(self, name: str) -> Model:
        if name not in self.models:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
        return self.models[name]

    def get(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        return self.model(name).resolve(version, label)
