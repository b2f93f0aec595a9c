"""`cifarflow predict IMAGE... --server HOST:PORT`: classify images over gRPC."""

from __future__ import annotations

import argparse
import dataclasses
import json

from cifarflow.defaults import MODEL_NAME


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "predict",
        help=summary,
        description="Classify images (files, folders, http(s) URLs) through the gateway's gRPC service, "
        "or straight to a TensorFlow Serving endpoint with --tf-serving, and print the top classes.",
    )
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image file, folder of images, or URL"
    )
    parser.add_argument(
        "--server", required=True, help="gateway gRPC HOST:PORT (or TF Serving's with --tf-serving)"
    )
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (1..20)")
    parser.add_argument(
        "--tf-serving",
        action="store_true",
        help="call TensorFlow Serving's PredictionService directly",
    )
    parser.add_argument(
        "--model-name", default=MODEL_NAME, help="model name on TF Serving (with --tf-serving)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cifarflow.errors import BadInputError
    from cifarflow.serving.protos import use_protos_only

    use_protos_only()  # the client needs TF Serving's messages, not TensorFlow
    from cifarflow.serving.client import ClientConfig, format_table, predict

    if not 1 <= args.top_k <= 20:
        raise BadInputError(f"--top-k must be between 1 and 20, got {args.top_k}")
    config = ClientConfig(
        server=args.server,
        tf_serving=args.tf_serving,
        model_name=args.model_name,
        top_k=args.top_k,
        timeout_s=args.timeout,
    )
    results = predict(args.images, config)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
    else:
        print(format_table(results))
    return 2 if any(r.error for r in results) else 0
