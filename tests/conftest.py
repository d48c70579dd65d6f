"""Test set-up: no network; named corpora come from ../shared/data through the real cache."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DEEP_RNN_SHARED_DATA", ROOT.parent / "shared" / "data"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The kernels `make` built stay in use when the session's download cache (seeded_cache) moves DEEP_RNN_CACHE.
os.environ.setdefault("DEEP_RNN_KERNELS_DIR", os.path.join(
    os.environ.get("DEEP_RNN_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "deep_rnn")), "native"))


def pytest_configure(config):
    if not (SHARED_DATA / "timemachine.txt").exists():
        raise pytest.UsageError(f"shared data not found at {SHARED_DATA} (set DEEP_RNN_SHARED_DATA)")


@pytest.fixture(scope="session", autouse=True)
def seeded_cache(tmp_path_factory):
    """A download cache holding the shared corpora, so `timemachine` resolves without a download."""
    cache = tmp_path_factory.mktemp("cache")
    (cache / "datasets").mkdir()
    shutil.copy(SHARED_DATA / "timemachine.txt", cache / "datasets" / "timemachine.txt")
    old = os.environ.get("DEEP_RNN_CACHE")
    os.environ["DEEP_RNN_CACHE"] = str(cache)
    os.environ.pop("DEEP_RNN_SEED_DIR", None)  # the Makefile's offline mirror would mask download tests
    yield cache
    if old is None:
        os.environ.pop("DEEP_RNN_CACHE", None)
    else:
        os.environ["DEEP_RNN_CACHE"] = old


def is_local_host(host) -> bool:
    """True for names and addresses that stay on this machine."""
    import ipaddress
    import socket

    if host in (None, "", b"", "localhost", socket.gethostname()):
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fails the test that looks up a host off this machine (in this process; the lookup itself fails)."""
    import socket

    remote = []
    real_getaddrinfo = socket.getaddrinfo

    def local_getaddrinfo(host, *args, **kwargs):
        if not is_local_host(host):
            remote.append(host)
            raise socket.gaierror(socket.EAI_NONAME, f"tests use no network (looked up {host})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_getaddrinfo)
    yield remote
    assert not remote, f"the test looked up hosts off this machine: {sorted(set(map(str, remote)))}"


@pytest.fixture(scope="session")
def timemachine_text() -> str:
    return (SHARED_DATA / "timemachine.txt").read_text()


def run_cli(module: str, *args: str, timeout: float = 600, env: dict | None = None, **kwargs):
    """Runs `python -m module args` as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})}, **kwargs)


def assert_user_error(proc, *needles: str):
    """Exit code 2, exactly one line on stderr naming the cause, no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, seeded_cache):
    """The Time Machine, holdout split, 16-step windows: ~9.8k train windows, seconds to make."""
    from pipeline import transform
    from pipeline.preprocessing import preprocess

    out = tmp_path_factory.mktemp("tiny") / "data"
    preprocess(["timemachine"], str(out), transform.PreprocessConfig(num_steps=16, stride=16))
    return out


TINY_TRAIN = dict(num_layers=2, num_hiddens=16, batch_size=256, epochs=2, progress="none", sample_chars=10)


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory):
    """A tiny model trained by the real train_and_evaluate: (model_dir, metrics)."""
    from trainer.config import TrainConfig
    from trainer.training import train_and_evaluate

    model_dir = tmp_path_factory.mktemp("trained") / "model"
    metrics = train_and_evaluate(TrainConfig.from_flat(**TINY_TRAIN), str(tiny_data), str(model_dir))
    return model_dir, metrics


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    """EXPORT_BASE with version 1 of the tiny model."""
    from serving.savedmodel import export_model

    base = tmp_path_factory.mktemp("export")
    export_model(str(trained[0]), str(base), "deep_rnn")
    return base
