"""Uploading a local run to S3 in the layout KFP uses on a cluster.

`<pipeline_root>/<pipeline>/<run-id>/<task>/<output>/...`, so a bucket holds
local and cluster runs side by side and `cifarflow runs` reads both.
"""

from __future__ import annotations

from pathlib import Path

from cifarflow.s3 import S3Location, S3Settings, describe_s3_error


def upload_run(
    run_dir: Path, root_uri: str, pipeline: str, settings: S3Settings | None = None
) -> str:
    """Uploads every file of `run_dir`; returns the run's S3 URI.

    Raises:
        RemoteError: S3 is unreachable or refuses the upload.
    """
    root = S3Location.parse(root_uri)
    settings = settings or S3Settings.from_env()
    client = settings.client()
    prefix = "/".join(p for p in (root.key.strip("/"), pipeline, run_dir.name) if p)
    try:
        if not client.bucket_exists(root.bucket):
            client.make_bucket(root.bucket)
        for path in sorted(run_dir.rglob("*")):
            if path.is_file():
                client.fput_object(
                    root.bucket, f"{prefix}/{path.relative_to(run_dir).as_posix()}", str(path)
                )
    except Exception as exc:  # minio raises S3Error, urllib3 errors, OSError
        raise describe_s3_error(exc, root) from None
    return f"s3://{root.bucket}/{prefix}"
