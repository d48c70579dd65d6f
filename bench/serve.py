"""Serving latency and throughput: gRPC and REST against the loaded SavedModel in-process.

    python -m bench.serve [--run-dir runs/default] [--duration 20]
Uses RUN_DIR/export when it exists, else trains and exports a default 2 × 32 GRU for a few epochs
(latency does not depend on how well it is trained). The server is the one `make pipeline` starts.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from bench.common import ROOT, emit
from common import cli


def timed_calls(fn, n: int) -> list[float]:
    for _ in range(10):
        fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(1e3 * (time.perf_counter() - start))
    return out


def ensure_export(run_dir: str | None) -> str:
    if run_dir and os.path.isdir(os.path.join(run_dir, "export", "deep_rnn")):
        return os.path.join(run_dir, "export", "deep_rnn")
    from pipeline import transform
    from pipeline.preprocessing import preprocess
    from serving.savedmodel import export_model
    from trainer.config import TrainConfig
    from trainer.training import train_and_evaluate

    work = tempfile.mkdtemp()
    preprocess(["timemachine"], os.path.join(work, "data"), transform.PreprocessConfig(split="d2l"))
    train_and_evaluate(TrainConfig.from_flat(epochs=3, verbose=0), os.path.join(work, "data"), os.path.join(work,
                                                                                                            "model"))
    export_model(os.path.join(work, "model"), os.path.join(work, "export"))
    return os.path.join(work, "export", "deep_rnn")


def load(client, seconds: float, concurrency: int) -> dict:
    counts, errors, stop = [0] * concurrency, [0] * concurrency, time.time() + seconds

    def worker(i):
        req = client.request("serving_default", prefix=["it has"], num_chars=20)
        while time.time() < stop:
            try:
                client.stub.Predict(req, timeout=30)
                counts[i] += 1
            except Exception:
                errors[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"concurrency": concurrency, "seconds": seconds, "requests": sum(counts),
            "requests_per_s": sum(counts) / seconds, "errors": sum(errors)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter,
                                     epilog=cli.examples_from(__doc__))
    parser.add_argument("--run-dir", help="a finished run whose export to serve (default: train a 3-epoch model first)")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds of each load phase (1, 4 and 16 concurrent clients)")
    parser.add_argument("--calls", type=int, default=300, help="sequential calls for the latency percentiles")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    from common.net import free_port
    from serving.grpc_client import Client, latency_summary
    from serving.layout import versions

    base = ensure_export(args.run_dir)
    path = os.path.join(base, str(versions(base)[-1]))
    loaded = tf.saved_model.load(path)
    fn = loaded.signatures["serving_default"]
    # What an in-process caller does per request, like the server: Python values in, Python bytes out.
    in_process = latency_summary(timed_calls(
        lambda: fn(prefix=tf.constant(["it has"]), num_chars=tf.constant(20))["text"].numpy(), args.calls))

    grpc_port, rest_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "serving.server", "--model-base", base, "--port",
                               str(grpc_port), "--rest-port", str(rest_port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = Client(f"127.0.0.1:{grpc_port}")
        client.wait_until_ready(120, server)
        grpc_lat = latency_summary(timed_calls(lambda: client.generate(["it has"], 20), args.calls))
        # The same channel and server with no TensorFlow work: what one gRPC round trip costs by itself.
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "deep_rnn"
        status_stub = model_service_pb2_grpc.ModelServiceStub(client.channel)
        transport = latency_summary(timed_calls(lambda: status_stub.GetModelStatus(status_request, timeout=30),
                                                args.calls))
        body = json.dumps({"inputs": {"prefix": ["it has"], "num_chars": 20}}).encode()
        url = f"http://127.0.0.1:{rest_port}/v1/models/deep_rnn:predict"
        rest_lat = latency_summary(timed_calls(lambda: urllib.request.urlopen(
            urllib.request.Request(url, data=body, method="POST"), timeout=30).read(), args.calls))
        throughput = [load(client, args.duration, c) for c in (1, 4, 16)]
    finally:
        server.terminate()
        server.wait()
    emit("serve", {"request": "serving_default, prefix 'it has', 20 chars", "in_process": in_process,
                   "grpc": grpc_lat, "rest": rest_lat, "grpc_round_trip_no_model": transport,
                   "grpc_p50_over_in_process_p50": grpc_lat["p50_ms"] / in_process["p50_ms"],
                   # the ratio if the server added nothing but one bare gRPC round trip to the in-process call
                   "ratio_floor_from_round_trip": 1 + transport["p50_ms"] / in_process["p50_ms"],
                   "throughput": throughput, "server": "serving.server (local stand-in)"})


if __name__ == "__main__":
    main()
