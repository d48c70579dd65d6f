"""The local server's limits, shared by its command and its service without importing TensorFlow."""

DEFAULT_MAX_REQUEST_BYTES = 4 << 20
DEFAULT_REST_IDLE_SECONDS = 60.0  # a REST connection silent this long is closed (its thread is freed)
DEFAULT_REST_MAX_CONNECTIONS = 1024  # REST connections open at once (a thread each); more get 503


def is_idle_time(seconds) -> bool:
    """Whether seconds can be a REST idle time: a finite number > 0 (not NaN); None means no limit."""
    return seconds is None or 0 < seconds < float("inf")
