"""Command-line client for a served model (TF Serving or serving.server): generate, sample or score over gRPC.

    python -m serving.client --server localhost:8500 --prefix 'it has' --num-chars 20
    python -m serving.client --server localhost:8500 --prefix 'it has' --num-chars 20 --temperature 0.8 --seed 1
    python -m serving.client --server localhost:8500 --score 'the time traveller'
The client class is serving.grpc_client.Client; this module imports it only when a request is made.
"""
from __future__ import annotations

import sys

from common import cli
from common.cli import UserError


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="serving.client", description=__doc__.split("\n")[0],
                           epilog="examples:\n" + "\n".join(__doc__.split("\n")[2:5]))
    p.add_argument("--server", default="127.0.0.1:8500", metavar="HOST:PORT", help="the gRPC endpoint")
    p.add_argument("--model-name", default="deep_rnn", help="the served model's name")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prefix", help="text to continue (greedy, or sampled with --temperature)")
    what.add_argument("--score", metavar="TEXT", help="print the perplexity of TEXT")
    p.add_argument("--num-chars", type=int, default=20, metavar="N", help="tokens to generate after the prefix")
    p.add_argument("--temperature", type=float, metavar="T",
                   help="sample at temperature T (signature sample) instead of greedy decoding (default: greedy)")
    p.add_argument("--top-k", type=int, default=0, metavar="K",
                   help="sample among the K most likely tokens only (0: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed: the same seed gives the same text")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds to wait for an answer")
    return p


def main(argv=None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    for name, low, high in (("num_chars", 0, 2**31 - 1), ("top_k", 0, 2**31 - 1), ("seed", -2**63, 2**63 - 1)):
        if not low <= getattr(args, name) <= high:
            raise UserError(f"--{name.replace('_', '-')} must be in [{low}, {high}], got {getattr(args, name)}")
    if args.temperature is not None and not 0 < args.temperature <= 100:
        raise UserError(f"--temperature must be in (0, 100], got {args.temperature}")
    from serving.grpc_client import Client

    client = Client(args.server, args.model_name, args.timeout)
    if args.score is not None:
        result = client.score([args.score])[0]
        print(f"perplexity {result['perplexity']:.3f} over {result['num_tokens']} tokens "
              f"(log-likelihood {result['log_likelihood']:.3f})")
    else:
        print(client.generate([args.prefix], args.num_chars, args.temperature, args.top_k, args.seed)[0])


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
