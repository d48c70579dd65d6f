"""Beam preprocessing vs. a single-process plain-Python run of the same transformation.

    python -m bench.preprocess [--big-mb 100]
Inputs: The Time Machine, and a >= 100 MB corpus built from the shared files (tinyshakespeare
and The Time Machine repeated). Throughput in MB/s and tokens/s for Beam (its in-process FnApiRunner,
multi_processing with 2 workers, and the DaskRunner on a local dask.distributed cluster of 2 worker processes)
and the reference, and the Beam/reference time ratio.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from bench.common import SHARED_DATA, emit
from common import cli
from pipeline import transform
from pipeline.preprocessing import preprocess
from pipeline.reference import preprocess_reference
from pipeline.sources import resolve_sources


def build_big_corpus(path: str, megabytes: int) -> None:
    parts = [(SHARED_DATA / "tinyshakespeare.txt").read_bytes(), (SHARED_DATA / "timemachine.txt").read_bytes()]
    written = 0
    with open(path, "wb") as f:
        while written < megabytes << 20:
            for part in parts:
                f.write(part)
                written += len(part)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(corpus: list[str], cfg, work: str, dask_address: str | None = None) -> dict:
    files = resolve_sources(corpus)
    size = sum(os.path.getsize(f) for f in files)
    ref_dir = os.path.join(work, "ref")
    os.makedirs(ref_dir, exist_ok=True)
    facts = {}
    t_ref = timed(lambda: facts.update(preprocess_reference(files, ref_dir, cfg)))
    tokens = facts["vocab"]["total_tokens"]
    result = {"bytes": size, "tokens": tokens, "reference_s": t_ref}
    engines = [("beam_direct", []),
               ("beam_multiprocessing_2", ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])]
    if dask_address:
        engines.append(("beam_dask_2", ["--runner=DaskRunner", f"--dask_client_address={dask_address}"]))
    for label, args in engines:
        out = os.path.join(work, label)
        result[f"{label}_s"] = timed(lambda: preprocess(corpus, out, cfg, args))
        result[f"{label}_ratio_to_reference"] = result[f"{label}_s"] / t_ref
        result[f"{label}_mb_per_s"] = size / 2**20 / result[f"{label}_s"]
        result[f"{label}_tokens_per_s"] = tokens / result[f"{label}_s"]
        shutil.rmtree(out)
    result["reference_mb_per_s"] = size / 2**20 / t_ref
    result["reference_tokens_per_s"] = tokens / t_ref
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter,
                                     epilog=cli.examples_from(__doc__))
    parser.add_argument("--big-mb", type=int, default=100,
                        help="size in MB of the large corpus (the shared texts repeated)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    cfg = transform.PreprocessConfig(split="holdout")
    from distributed import LocalCluster

    with tempfile.TemporaryDirectory() as work, LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                             dashboard_address=None, host="127.0.0.1") as cluster:
        address = cluster.scheduler_address  # a scheduler and two worker processes, started before timing
        results = {"config": cfg.to_dict(), "timemachine": measure(["timemachine"], cfg, work, address)}
        big = os.path.join(work, "big.txt")
        build_big_corpus(big, args.big_mb)
        results[f"corpus_{args.big_mb}mb"] = measure([big], cfg, work, address)
    emit("preprocess", results)


if __name__ == "__main__":
    main()
