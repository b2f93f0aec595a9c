"""Resumable, retrying downloads from HTTP(S) and S3 into a local file.

A download writes to `<dest>.part`. When it is interrupted (a dropped
connection, a killed process), the next attempt asks only for the missing
bytes (an HTTP `Range` request, an S3 ranged GET) and appends them. Network
failures are retried with exponential backoff; errors that retrying cannot
fix (404, refused credentials) fail at once. The caller renames the `.part`
file into place only after verifying it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from cifarflow.errors import RemoteError
from cifarflow.progress import ByteProgress
from cifarflow.s3 import S3Location, S3Settings, describe_s3_error

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


@dataclasses.dataclass
class Response:
    """What an opener returns: the bytes from `offset` on, and the full size."""

    chunks: Iterator[bytes]
    total: int | None
    offset: int  # where the body starts; 0 means the server restarted from scratch


class RetryableError(Exception):
    """A failure worth another attempt (connection, timeout, 5xx)."""


# opener(offset) -> context manager yielding a Response
Opener = Callable[[int], AbstractContextManager[Response]]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    first_delay: float = 0.5
    max_delay: float = 20.0

    def delays(self) -> Iterator[float]:
        delay = self.first_delay
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(delay * 2, self.max_delay)


def fetch_resumable(
    opener: Opener,
    dest: Path,
    label: str,
    retry: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Downloads into `dest.part`, resuming and retrying; returns that path.

    Raises:
        RemoteError: the transfer failed after every retry, or cannot succeed.
    """
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    delays = retry.delays()
    while True:
        have = part.stat().st_size if part.exists() else 0
        try:
            with opener(have) as response:
                if (
                    response.total is not None
                    and have == response.total
                    and response.offset == have
                ):
                    return part  # complete already (a resumed run)
                mode = "ab" if response.offset == have and have > 0 else "wb"
                progress = ByteProgress(label, response.total, start=response.offset)
                with open(part, mode) as out:
                    for chunk in response.chunks:
                        out.write(chunk)
                        progress.update(len(chunk))
                progress.finish()
                size = part.stat().st_size
                if response.total is not None and size != response.total:
                    raise RetryableError(f"transfer ended at {size} of {response.total} bytes")
                return part
        except RetryableError as exc:
            delay = next(delays, None)
            if delay is None:
                raise RemoteError(
                    f"{label}: giving up after {retry.attempts} attempts: {exc}"
                ) from None
            log.warning(
                "%s: %s; retrying in %.1fs (resuming at byte %d)", label, exc, delay, _size(part)
            )
            sleep(delay)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


# --- HTTP ---------------------------------------------------------------------------


def http_opener(url: str, timeout: float = 30.0) -> Opener:
    """Opens `url` from a byte offset with a Range request."""
    import requests

    @contextlib.contextmanager
    def open_at(offset: int) -> Iterator[Response]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            resp = requests.get(url, headers=headers, stream=True, timeout=timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RetryableError(f"cannot connect: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            raise RemoteError(f"{url}: {exc}") from None
        with resp:
            if resp.status_code == 416:  # asked past the end: the file may be complete
                total = _total_from_content_range(resp.headers.get("Content-Range"))
                yield Response(iter(()), total, offset if total == offset else 0)
                return
            if resp.status_code >= 500 or resp.status_code == 429:
                raise RetryableError(f"server answered {resp.status_code}")
            if resp.status_code >= 400:
                raise RemoteError(f"{url}: server answered {resp.status_code} {resp.reason}")
            if resp.status_code == 206:
                start = _start_from_content_range(resp.headers.get("Content-Range"))
                total = _total_from_content_range(resp.headers.get("Content-Range"))
            else:  # 200: whole body, the server ignored or did not get our Range
                start = 0
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            yield Response(_http_chunks(resp), total, start)

    return open_at


def _http_chunks(resp) -> Iterator[bytes]:
    import requests

    try:
        yield from resp.iter_content(_CHUNK)
    except (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
    ) as exc:
        raise RetryableError(f"connection dropped: {type(exc).__name__}") from None


def _start_from_content_range(value: str | None) -> int:
    # "bytes 100-199/1000"
    try:
        return int((value or "").split()[1].split("-")[0])
    except (IndexError, ValueError):
        raise RemoteError(f"server sent a malformed Content-Range: {value!r}") from None


def _total_from_content_range(value: str | None) -> int | None:
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1]
    return int(total) if total.isdigit() else None


# --- S3 -----------------------------------------------------------------------------


def s3_opener(location: S3Location, settings: S3Settings) -> Opener:
    """Opens `s3://bucket/key` from a byte offset with a ranged GET."""
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError

    client = settings.client()

    @contextlib.contextmanager
    def open_at(offset: int) -> Iterator[Response]:
        try:
            total = client.stat_object(location.bucket, location.key).size
            if total is None:
                raise RemoteError(f"{location} has no size in its object metadata")
            if offset >= total:
                yield Response(iter(()), total, offset if offset == total else 0)
                return
            resp = client.get_object(location.bucket, location.key, offset=offset)
        except S3Error as exc:
            raise describe_s3_error(exc, location) from None
        except (HTTPError, OSError) as exc:
            raise RetryableError(f"cannot reach S3: {type(exc).__name__}") from None
        try:
            yield Response(_s3_chunks(resp), total, offset)
        finally:
            resp.close()
            resp.release_conn()

    return open_at


def _s3_chunks(resp) -> Iterator[bytes]:
    from urllib3.exceptions import HTTPError

    try:
        yield from resp.stream(_CHUNK)
    except (HTTPError, OSError) as exc:
        raise RetryableError(f"connection dropped: {type(exc).__name__}") from None
