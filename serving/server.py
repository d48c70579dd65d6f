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

from common import cli, config
from common.cli import UserError
from serving.settings import ServerConfig

EXAMPLES = """examples:
  python -m serving.server --model-config-file runs/default/export/models.config
  python -m serving.server --model-base runs/default/export/deep_rnn --port 9000 --rest-port -1
Then: python -m serving.client --server 127.0.0.1:8500 --prefix 'it has' --num-chars 20
  or: curl -d '{"inputs": {"prefix": ["it has"], "num_chars": 20}}' \\
          127.0.0.1:8501/v1/models/deep_rnn:predict"""


SECTIONS = {"server": ServerConfig}


def build_parser():
    p = config.make_parser("serving.server", __doc__.split("\n")[0], EXAMPLES, SECTIONS)
    p.add_argument("--model-base", metavar="DIR",
                   help="EXPORT_BASE/<model_name>: the directory of versions (latest policy)")
    p.add_argument("--model-config-file", metavar="FILE",
                   help="TF Serving's models.config: several models, version policies, labels")
    return p


def parse_args(argv):
    """(paths, ServerConfig); exactly one of --model-base and --model-config-file."""
    args, sections = config.parse(build_parser(), argv, SECTIONS)
    if (args.model_base is None) == (args.model_config_file is None):
        raise UserError("serving.server: give exactly one of --model-base and --model-config-file")
    return args, sections["server"]


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args, cfg = parse_args(argv)
    cli.quiet_tensorflow()
    import tensorflow as tf

    from serving.service import Server

    session_config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=cfg.intra_op_threads,
                                              inter_op_parallelism_threads=cfg.inter_op_threads)
    server = Server(args.model_base, cfg.model_name, cfg.host, cfg.port,
                    None if cfg.rest_port == -1 else cfg.rest_port, cfg.poll_seconds, cfg.max_request_bytes,
                    cfg.workers, args.model_config_file, session_config, cfg.rest_idle_seconds,
                    cfg.rest_max_connections, cfg.model_config_file_poll_wait_seconds)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    print(json.dumps({"grpc_port": server.port, "rest_port": server.rest_port, "host": cfg.host}), flush=True)
    stopped.wait()
    server.stop()


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
