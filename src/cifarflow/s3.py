"""S3/MinIO locations and clients, configured from the environment.

Endpoint and credentials come from `S3_ENDPOINT` (host:port), `S3_ACCESS_KEY`,
`S3_SECRET_KEY` and `S3_SECURE`, or from the matching `--s3-*` CLI flags,
never from code. Secrets are never printed: `S3Settings.__repr__` hides them.
`S3_TIMEOUT` (seconds, default 60) bounds each connect and each wait for an
answer: the minio client's own default is 5 minutes, so a hung server (one
that accepts connections but never answers) held a publish or a sync for
half an hour across its retries.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from cifarflow.errors import BadInputError, RemoteError

if TYPE_CHECKING:  # minio is imported lazily: most commands never touch S3
    from minio import Minio

_TRUE = {"1", "true", "yes", "on"}


@dataclasses.dataclass(frozen=True)
class S3Location:
    """`s3://bucket/key`; `key` may be empty (the bucket) or a prefix."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith("s3://"):
            raise BadInputError(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise BadInputError(f"s3 URI has no bucket: {uri!r}")
        return cls(bucket=bucket, key=key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3_uri(value: str) -> bool:
    return value.startswith("s3://")


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """How to reach the object store."""

    endpoint: str
    access_key: str = dataclasses.field(repr=False)
    secret_key: str = dataclasses.field(repr=False)
    secure: bool = False
    timeout_s: float = 60.0  # per connect and per read; a call is tried up to 6 times

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        secure: bool | None = None,
    ) -> S3Settings:
        """Explicit arguments win over `S3_*` environment variables."""
        env = os.environ if environ is None else environ
        endpoint = endpoint or env.get("S3_ENDPOINT", "")
        if not endpoint:
            raise BadInputError("no S3 endpoint: set S3_ENDPOINT=host:port or pass --s3-endpoint")
        access_key = access_key or env.get("S3_ACCESS_KEY", "")
        secret_key = secret_key or env.get("S3_SECRET_KEY", "")
        if not access_key or not secret_key:
            raise BadInputError("no S3 credentials: set S3_ACCESS_KEY and S3_SECRET_KEY")
        if secure is None:
            secure = env.get("S3_SECURE", "false").strip().lower() in _TRUE
        timeout = env.get("S3_TIMEOUT", "").strip()
        try:
            timeout_s = float(timeout) if timeout else cls.timeout_s
            if not timeout_s > 0:
                raise ValueError
        except ValueError:
            raise BadInputError(
                f"S3_TIMEOUT must be a positive number of seconds, got {timeout!r}"
            ) from None
        return cls(
            endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            timeout_s=timeout_s,
        )

    def client(self) -> Minio:
        import certifi
        import urllib3
        from minio import Minio

        # minio's default pool, with our timeout instead of its 5 minutes.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.timeout_s, read=self.timeout_s),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(
                total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            http_client=http,
        )


def describe_s3_error(exc: Exception, location: S3Location | str) -> RemoteError:
    """Turns minio/urllib3 exceptions into one readable line."""
    from minio.error import S3Error

    if isinstance(exc, S3Error):
        if exc.code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"}:
            return RemoteError(
                f"S3 refused the credentials for {location} ({exc.code}): check S3_ACCESS_KEY/S3_SECRET_KEY"
            )
        if exc.code in {"NoSuchKey", "NoSuchBucket"}:
            return RemoteError(f"{location} does not exist ({exc.code})")
        return RemoteError(f"S3 error for {location}: {exc.code}: {exc.message}")
    where, cause = _network_failure(exc)
    return RemoteError(f"cannot reach S3{where} for {location}: {cause}")


def _network_failure(exc: Exception) -> tuple[str, str]:
    """(' at host:port', root cause) of urllib3's retry-wrapped errors, which bury both in reprs."""
    from urllib3.exceptions import MaxRetryError

    if not isinstance(exc, MaxRetryError):
        return "", f"{type(exc).__name__}: {exc}"
    reason = exc.reason if exc.reason is not None else exc
    # "HTTPConnection(host=..., port=...): Failed to establish a new connection: [Errno 111] Connection refused"
    cause = str(reason).split("): ", 1)[-1]
    return f" at {exc.pool.host}:{exc.pool.port}", f"{cause} (after retries)"
