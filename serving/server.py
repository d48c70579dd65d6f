"""A small stand-in for TensorFlow Serving: its gRPC and REST APIs over the same exports and model config.

    python -m serving.server --model-base runs/x/export/deep_rnn [--port 8500 --rest-port 8501]
    python -m serving.server --model-config-file runs/x/export/models.config
For tests and laptops; production is tensorflow_model_server (see README). A client written from TF
Serving's documentation works unchanged against both: versions are loaded by TF Serving's own
(session-based) loader, version policies and labels come from models.config, responses carry typed
fields (gRPC) and TF Serving's JSON shapes (REST), and errors carry its status codes. Behaviour that
differs on purpose: a request-size limit (`--max-request-bytes`) and TensorProtos whose values do not
fill their shape are refused (TF Serving accepts both).
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading

from common import cli
from common.cli import UserError
from serving.defaults import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REST_IDLE_SECONDS,
    DEFAULT_REST_MAX_CONNECTIONS,
    is_idle_time,
)

EXAMPLES = """examples:
  python -m serving.server --model-config-file runs/default/export/models.config
  python -m serving.server --model-base runs/default/export/deep_rnn --port 9000 --rest-port -1
Then: python -m serving.client --server 127.0.0.1:8500 --prefix 'it has' --num-chars 20
  or: curl -d '{"inputs": {"prefix": ["it has"], "num_chars": 20}}' \\
          127.0.0.1:8501/v1/models/deep_rnn:predict"""


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="serving.server", description=__doc__.split("\n")[0], epilog=EXAMPLES)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-base", metavar="DIR",
                        help="EXPORT_BASE/<model_name>: the directory of versions (latest policy)")
    source.add_argument("--model-config-file", metavar="FILE",
                        help="TF Serving's models.config: several models, version policies, labels")
    p.add_argument("--model-name", default="deep_rnn", help="the name requests use, with --model-base")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (the default is loopback only)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0: any free port)")
    p.add_argument("--rest-port", type=int, default=8501, help="REST port (0: any free port, -1: no REST)")
    p.add_argument("--poll-seconds", type=float, default=1.0, metavar="S", help="how often to look for new versions")
    p.add_argument("--max-request-bytes", type=cli.positive_int, default=DEFAULT_MAX_REQUEST_BYTES, metavar="N",
                   help="largest gRPC message or REST body accepted (default: %(default)s = 4 MiB)")
    p.add_argument("--rest-idle-seconds", type=float, default=DEFAULT_REST_IDLE_SECONDS, metavar="S",
                   help="close a REST connection that sends or accepts nothing for S seconds: an idle keep-alive "
                        "connection, or a client stalled mid-request (default: %(default)s)")
    p.add_argument("--rest-max-connections", type=cli.positive_int, default=DEFAULT_REST_MAX_CONNECTIONS, metavar="N",
                   help="REST connections open at once (each holds a thread); one more gets 503 and is closed "
                        "(default: %(default)s)")
    p.add_argument("--workers", type=cli.positive_int, default=16, metavar="N", help="gRPC worker threads")
    p.add_argument("--intra-op-threads", type=int, default=1, metavar="N",
                   help="threads per TF op (0: TF's default); generation runs many tiny ops")
    p.add_argument("--inter-op-threads", type=int, default=0, metavar="N",
                   help="TF ops run in parallel (0: TF's default)")
    return p


def parse_args(argv):
    args = build_parser().parse_args(argv)
    if args.poll_seconds <= 0:
        raise UserError(f"--poll-seconds must be > 0, got {args.poll_seconds}")
    if not is_idle_time(args.rest_idle_seconds):
        raise UserError(f"--rest-idle-seconds must be a number of seconds > 0, got {args.rest_idle_seconds}")
    return args


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    cli.quiet_tensorflow()
    import tensorflow as tf

    from serving.service import Server

    session_config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=args.intra_op_threads,
                                              inter_op_parallelism_threads=args.inter_op_threads)
    server = Server(args.model_base, args.model_name, args.host, args.port,
                    None if args.rest_port == -1 else args.rest_port, args.poll_seconds, args.max_request_bytes,
                    args.workers, args.model_config_file, session_config, args.rest_idle_seconds,
                    args.rest_max_connections)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    print(json.dumps({"grpc_port": server.port, "rest_port": server.rest_port, "host": args.host}), flush=True)
    stopped.wait()
    server.stop()


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
