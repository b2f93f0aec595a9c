"""`cifarflow ingest`: fetch, verify and extract the CIFAR-100 archive."""

from __future__ import annotations

import argparse

from cifarflow.data.official import OFFICIAL_URL


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help=summary,
        description=(
            "Fetch the CIFAR-100 python archive, check every file against the published md5s "
            "(or the whole archive against --expected-md5), and extract it safely. Downloads "
            "show progress, resume after an interruption and retry with backoff."
        ),
        epilog=(
            "examples:\n"
            "  cifarflow ingest --source sample --out runs/data/raw\n"
            f"  cifarflow ingest --source {OFFICIAL_URL} --out raw\n"
            "  cifarflow ingest --source s3://datasets/cifar-100-python.tar.gz --out raw  # S3_* env vars\n"
            "  cifarflow ingest --source my-cifar.tar.gz --expected-md5 0123...cdef --out raw"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--source",
        default=OFFICIAL_URL,
        help="'sample' (shipped with cifarflow), an http(s) URL, a local .tar.gz, or s3://bucket/key",
    )
    parser.add_argument(
        "--out", required=True, help="output folder (gets cifar-100-python/ and ingest.json)"
    )
    parser.add_argument(
        "--expected-md5",
        help="accept your own archive by its whole-file md5 instead of the published per-file md5s",
    )
    parser.add_argument(
        "--cache-dir",
        help="where downloads are kept and resumed (default: $CIFARFLOW_CACHE_DIR or ~/.cache/cifarflow/downloads)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cifarflow.components.ingest.executor import ingest

    ingest(args.source, args.out, expected_md5=args.expected_md5, cache_dir=args.cache_dir)
    return 0
