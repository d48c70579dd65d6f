"""Preprocessing on a real distributed engine: Beam's DaskRunner on a dask.distributed cluster of a scheduler and
two worker processes on this machine. Every output leaves the workers through Beam's filesystems into a staging
folder beside the output, so a worker that cannot see the driver's temporary folder still writes all of it."""
from __future__ import annotations

import filecmp
import os

import pytest

from tests.conftest import SHARED_DATA, assert_user_error, run_cli

pytestmark = pytest.mark.slow

CORPUS = str(SHARED_DATA / "tinyshakespeare.txt")
FLAGS = ["--split", "holdout", "--normalize", "none"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two single-threaded worker processes; the workers' TMPDIR is their own."""
    distributed = pytest.importorskip("distributed")
    worker_tmp = tmp_path_factory.mktemp("worker-tmp")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1", env={"TMPDIR": str(worker_tmp)}) as local:
        yield local.scheduler_address


def _same_tree(a, b) -> list[str]:
    """Files that differ (or exist on one side only) between two directories."""
    compare = filecmp.dircmp(a, b)
    different = compare.left_only + compare.right_only + compare.diff_files + compare.funny_files
    _, mismatch, errors = filecmp.cmpfiles(a, b, compare.common_files, shallow=False)
    return sorted(set(different + mismatch + errors))


def test_dask_runner_output_is_byte_identical_to_the_in_process_runners(cluster, tmp_path):
    reference = run_cli("pipeline.preprocess", "--corpus", CORPUS, "--output", str(tmp_path / "ref"), *FLAGS)
    assert reference.returncode == 0, reference.stderr[-2000:]
    on_dask = run_cli("pipeline.preprocess", "--corpus", CORPUS, "--output", str(tmp_path / "dask"), *FLAGS,
                      "--runner=DaskRunner", f"--dask_client_address={cluster}")
    assert on_dask.returncode == 0, on_dask.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "dask")) == sorted(os.listdir(tmp_path / "ref"))
    assert _same_tree(tmp_path / "dask", tmp_path / "ref") == []
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # the staging folder was promoted


def test_workers_that_cannot_see_the_drivers_temporary_folder_still_write_everything(cluster, tmp_path):
    """The driver's TMPDIR is a folder the workers never see (theirs is another); the staging folder lies
    beside the output, where both reach, so the output is complete."""
    driver_tmp = tmp_path / "driver-only"
    driver_tmp.mkdir()
    out = tmp_path / "out" / "data"
    proc = run_cli("pipeline.preprocess", "--corpus", CORPUS, "--output", str(out), *FLAGS,
                   "--runner=DaskRunner", f"--dask_client_address={cluster}", env={"TMPDIR": str(driver_tmp)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = os.listdir(out)
    assert {"metadata.json", "vocab.txt"} <= set(names) and any(n.startswith("train-") for n in names)
    assert not [n for n in names if n.startswith(("beam-temp", "_facts"))]
    assert os.listdir(driver_tmp) == []  # nothing of the output went through the driver's own temp folder


def test_runner_names_as_beam_names_them(tmp_path):
    assert_user_error(run_cli("pipeline.preprocess", "--corpus", CORPUS, "--output", str(tmp_path / "x"),
                              "--runner=NoSuchRunner"), "--runner=NoSuchRunner")


def test_an_output_on_an_object_store_is_written_then_marked(tmp_path, monkeypatch):
    """--output on a filesystem without atomic renames (tests/fakeremote.py acts as gs:// does): the staged output
    moves in with metadata.json last, byte for byte the local run's; a second run replaces it, and files this
    project did not write are never replaced."""
    from pipeline import transform
    from pipeline.preprocessing import preprocess
    from tests import fakeremote  # noqa: F401  registers fakeremote://

    root = tmp_path / "bucket-root"
    monkeypatch.setenv("DEEP_RNN_FAKEREMOTE_ROOT", str(root))
    cfg = transform.PreprocessConfig(split="holdout", normalize="none", num_steps=16)
    corpus = [str(SHARED_DATA / "timemachine.txt")]
    preprocess(corpus, str(tmp_path / "local"), cfg)
    for _ in range(2):  # the second run replaces the first's output
        preprocess(corpus, "fakeremote://bucket/runs/data", cfg)
        assert _same_tree(tmp_path / "local", root / "bucket" / "runs" / "data") == []
    assert sorted(os.listdir(root / "bucket" / "runs")) == ["data"]  # no staging prefix left
    (root / "bucket" / "theirs").mkdir(parents=True)
    (root / "bucket" / "theirs" / "notes.txt").write_text("mine")
    from common.cli import UserError

    with pytest.raises(UserError, match="did not write"):
        preprocess(corpus, "fakeremote://bucket/theirs", cfg)
    assert (root / "bucket" / "theirs" / "notes.txt").read_text() == "mine"
