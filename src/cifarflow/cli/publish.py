"""`cifarflow publish`: copy an exported model into the store as a new version."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cifarflow.errors import BadInputError


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "publish",
        help=summary,
        description=(
            "Copy an exported model folder (SavedModel plus extra files) verbatim into the model "
            "store as the next version; cifarflow.json (metrics, class names, run id, data checksum) "
            "is written last and marks the version complete."
        ),
    )
    parser.add_argument(
        "--model", required=True, type=Path, help="exported model folder (has saved_model.pb)"
    )
    parser.add_argument("--store", required=True, help="store: local folder or s3://bucket/prefix")
    parser.add_argument("--model-name", required=True, help="model folder name in the store")
    parser.add_argument(
        "--metrics",
        type=Path,
        help="metrics.json to record (default: <model>/metrics.json if present)",
    )
    parser.add_argument("--run-id", default="", help="pipeline run id to record")
    parser.add_argument(
        "--data-checksum", default="", help="checksum of the training data to record"
    )
    parser.add_argument(
        "--promote", metavar="LABEL", help="also point this label (e.g. stable) at the new version"
    )
    from cifarflow.serving.store.cli_flags import add_s3_flags

    add_s3_flags(parser)
    parser.set_defaults(func=run)


def _metadata(args: argparse.Namespace) -> dict[str, Any]:
    """metrics (and the class names they name) from the candidate's metrics.json."""
    from cifarflow.components.candidate import METRICS_FILE, CandidateMetrics

    path = args.metrics or (args.model / METRICS_FILE)
    if not path.is_file():
        if args.metrics:
            raise BadInputError(f"--metrics {path} does not exist")
        return {"metrics": {}}
    metrics = CandidateMetrics.read(path)
    return {"metrics": metrics.to_json(), "class_names": metrics.class_names}


def run(args: argparse.Namespace) -> int:
    from cifarflow.serving.store import open_store, publish_model
    from cifarflow.serving.store.cli_flags import s3_settings

    settings = s3_settings(args, args.store)
    metadata = {
        **_metadata(args),
        "run_id": args.run_id,
        "data_checksum": args.data_checksum,
    }
    result = publish_model(args.model, args.store, args.model_name, metadata, settings)
    print(f"published {result.model_name} version {result.version} to {result.uri}")
    if args.promote:
        open_store(args.store, settings).promote(args.model_name, result.version, args.promote)
        print(f"label {args.promote} -> version {result.version}")
    return 0
