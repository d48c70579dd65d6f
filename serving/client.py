"""Command-line client for a served model (TF Serving or serving.server): generate, sample or score over gRPC.

    python -m serving.client --server localhost:8500 --prefix 'it has' --num-chars 20
    python -m serving.client --server localhost:8500 --prefix 'it has' --num-chars 20 --temperature 0.8 --seed 1
    python -m serving.client --server localhost:8500 --score 'the time traveller'
The client class is serving.grpc_client.Client; this module imports it only when a request is made.
"""
from __future__ import annotations

import sys

from common import cli, config
from common.cli import UserError
from serving.settings import RequestConfig

SECTIONS = {"request": RequestConfig}


def build_parser():
    examples = "examples:\n" + "\n".join(__doc__.split("\n")[2:5])
    p = config.make_parser("serving.client", __doc__.split("\n")[0], examples, SECTIONS)
    p.add_argument("--server", default="127.0.0.1:8500", metavar="HOST:PORT", help="the gRPC endpoint")
    p.add_argument("--prefix", help="text to continue (greedy, or sampled with --temperature)")
    p.add_argument("--score", metavar="TEXT", help="print the perplexity of TEXT")
    return p


def main(argv=None) -> None:
    args, sections = config.parse(build_parser(), argv, SECTIONS)
    cfg = sections["request"]
    if (args.prefix is None) == (args.score is None):
        raise UserError("serving.client: give exactly one of --prefix and --score")
    for flag, text in (("--prefix", args.prefix), ("--score", args.score)):
        try:
            (text or "").encode("utf-8")
        except UnicodeEncodeError:  # bytes the terminal's encoding could not decode
            raise UserError(f"serving.client: {flag} is not valid UTF-8 text") from None
    from serving.grpc_client import Client

    client = Client(args.server, cfg.model_name, cfg.timeout)
    if args.score is not None:
        result = client.score([args.score])[0]
        print(f"perplexity {result['perplexity']:.3f} over {result['num_tokens']} tokens "
              f"(log-likelihood {result['log_likelihood']:.3f})")
    else:
        print(client.generate([args.prefix], cfg.num_chars, cfg.temperature, cfg.top_k, cfg.seed)[0])


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
