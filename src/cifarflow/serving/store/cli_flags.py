"""The `--s3-*` flags shared by the verbs that open a model store."""

from __future__ import annotations

import argparse

from cifarflow.s3 import S3Settings


def add_s3_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("S3/MinIO (default: the S3_* environment variables)")
    group.add_argument("--s3-endpoint", help="host:port (S3_ENDPOINT)")
    group.add_argument("--s3-access-key", help="access key (S3_ACCESS_KEY); prefer the variable")
    group.add_argument(
        "--s3-secret-key", help="secret key (S3_SECRET_KEY); prefer the variable, flags show in ps"
    )
    group.add_argument(
        "--s3-secure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use TLS (S3_SECURE)",
    )


def s3_settings(args: argparse.Namespace, *uris: str) -> S3Settings | None:
    """Settings when any of `uris` is on S3, else None (local stores need none)."""
    if not any(str(u).startswith("s3://") for u in uris if u):
        return None
    return S3Settings.from_env(
        endpoint=args.s3_endpoint,
        access_key=args.s3_access_key,
        secret_key=args.s3_secret_key,
        secure=args.s3_secure,
    )
