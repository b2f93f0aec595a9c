"""Typed errors, each mapped to one CLI exit code.

Every failure a user can cause or fix (bad flag, corrupt archive, data
anomaly, unreachable server, full disk) is one of these; the CLI prints its
message as a single line and exits with its code. Anything else is a bug.
"""

from __future__ import annotations

import errno
import os
import shutil


class CifarflowError(Exception):
    """Base of all expected failures; `exit_code` is what the CLI returns."""

    exit_code = 1


class BadInputError(CifarflowError):
    """The user asked for something that cannot work: a missing path, a bad value."""

    exit_code = 2


class IntegrityError(CifarflowError):
    """A file is corrupt, truncated, has the wrong checksum or is unsafe to open."""

    exit_code = 3


class DataAnomalyError(CifarflowError):
    """The data loaded but breaks the schema or statistics checks."""

    exit_code = 4


class RemoteError(CifarflowError):
    """A server (HTTP, S3, gRPC) could not be reached or refused the request."""

    exit_code = 5


class StorageError(CifarflowError):
    """A file could not be written or read: the disk is full, read-only or failing."""

    exit_code = 7


# errno values that mean "the disk, not the program".
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


def storage_error(exc: OSError, where: str | os.PathLike | None = None) -> StorageError | None:
    """A one-line StorageError for an OSError the disk caused; None for any other OSError.

    Args:
        exc: the error; a `shutil.Error` (copytree's list of per-file
            failures) is reported by its first disk failure.
        where: the folder being written, named when `exc` carries no file name
            (a write on an open file does not).
    """
    if isinstance(exc, shutil.Error):
        failures = (
            [f for f in exc.args[0] if isinstance(f, tuple) and len(f) == 3] if exc.args else []
        )
        for _, target, why in failures:
            reason = next(
                (os.strerror(n) for n in _STORAGE_ERRNOS if os.strerror(n) in str(why)), None
            )
            if reason:
                return StorageError(f"{reason}: cannot write {target}")
        return None
    if exc.errno not in _STORAGE_ERRNOS:
        return None
    target = exc.filename or where
    return StorageError(f"{exc.strerror}: cannot write {target}" if target else str(exc.strerror))
