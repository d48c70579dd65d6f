"""The serving commands' settings, each field declared once with its default and one line of help (the flags and
--config files of serving.server, serving.export and serving.client derive from them); no TensorFlow import."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

DEFAULT_MAX_REQUEST_BYTES = 4 << 20
DEFAULT_REST_IDLE_SECONDS = 60.0  # a REST connection silent this long is closed (its thread is freed)
DEFAULT_REST_MAX_CONNECTIONS = 1024  # REST connections open at once (a thread each); more get 503


def is_idle_time(seconds) -> bool:
    """Whether seconds can be a REST idle time: a finite number > 0 (not NaN); None means no limit."""
    return seconds is None or 0 < seconds < float("inf")


def _check_port(name: str, value: int, allowed: tuple[int, ...] = ()) -> None:
    if value not in allowed and not 0 <= value <= 65535:
        raise ValueError(f"{name} {value} is not a TCP port (0-65535; 0 picks a free one)")


@dataclass(frozen=True, kw_only=True)
class ServedName:
    model_name: str = "deep_rnn"
    """the served model's name, the one requests use"""

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}", self.model_name) or self.model_name in (".", ".."):
            raise ValueError(f"model_name {self.model_name[:80]!r}: use up to 255 letters, digits, '_', '.', '-', "
                             "not starting with '.' or '-'")


@dataclass(frozen=True, kw_only=True)
class ServerConfig(ServedName):
    """Server: where it listens, its limits and its threads"""
    host: str = "127.0.0.1"
    """address to bind (the default is loopback only)"""
    port: int = 8500
    """gRPC port (0: any free port)"""
    rest_port: int = 8501
    """REST port (0: any free port, -1: no REST)"""
    poll_seconds: float = 1.0
    """how often to look for new versions"""
    model_config_file_poll_wait_seconds: float = 0.0
    """re-read --model-config-file this often, adding, removing and re-versioning models while serving (TF
    Serving's flag of the same name; 0: read it once)"""
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    """largest gRPC message or REST body accepted (4 MiB)"""
    rest_idle_seconds: float = DEFAULT_REST_IDLE_SECONDS
    """close a REST connection that sends or accepts nothing for this long: an idle keep-alive connection, or a
    client stalled mid-request"""
    rest_max_connections: int = DEFAULT_REST_MAX_CONNECTIONS
    """REST connections open at once (each holds a thread); one more gets 503 and is closed"""
    workers: int = 16
    """gRPC worker threads"""
    intra_op_threads: int = 1
    """threads per TF op (0: TF's default); generation runs many tiny ops"""
    inter_op_threads: int = 0
    """TF ops run in parallel (0: TF's default)"""

    def __post_init__(self):
        super().__post_init__()
        _check_port("port", self.port)
        _check_port("rest_port", self.rest_port, allowed=(-1,))
        if not 0 < self.poll_seconds < math.inf:
            raise ValueError(f"poll_seconds must be > 0, got {self.poll_seconds}")
        if not 0 <= self.model_config_file_poll_wait_seconds < math.inf:
            raise ValueError("model_config_file_poll_wait_seconds must be >= 0 (0: read once), got "
                             f"{self.model_config_file_poll_wait_seconds}")
        if not is_idle_time(self.rest_idle_seconds):
            raise ValueError(f"rest_idle_seconds must be a number of seconds > 0, got {self.rest_idle_seconds}")
        for name in ("max_request_bytes", "rest_max_connections", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("intra_op_threads", "inter_op_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class ExportConfig(ServedName):
    """Export: the model's name and version in the export base"""
    version: int | None = None
    """version number (default: one more than the newest)"""
    source_fingerprint: str | None = None
    """recorded in the version, so pipelines can skip re-exports (default: none)"""

    def __post_init__(self):
        super().__post_init__()
        if self.version is not None and not 1 <= self.version <= 2**63 - 1:  # TF Serving's versions are int64
            raise ValueError(f"version must be in [1, 2^63 - 1], got {self.version}")


@dataclass(frozen=True, kw_only=True)
class RequestConfig(ServedName):
    """Request: what the client asks of the served model"""
    num_chars: int = 20
    """tokens to generate after the prefix"""
    temperature: float | None = None
    """sample at this temperature (signature sample) instead of greedy decoding (default: greedy)"""
    top_k: int = 0
    """sample among the K most likely tokens only (0: all)"""
    seed: int = 0
    """sampling seed: the same seed gives the same text"""
    timeout: float = 30.0
    """seconds to wait for an answer"""

    def __post_init__(self):
        super().__post_init__()
        for name, low, high in (("num_chars", 0, 2**31 - 1), ("top_k", 0, 2**31 - 1), ("seed", -2**63, 2**63 - 1)):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {getattr(self, name)}")
        if self.temperature is not None and not 0 < self.temperature <= 100:
            raise ValueError(f"temperature must be in (0, 100], got {self.temperature}")
        if not 0 < self.timeout <= 24 * 3600:
            raise ValueError(f"timeout must be in (0, 86400] seconds, got {self.timeout}")
