"""Typed errors, each mapped to one CLI exit code.

Every failure a user can cause or fix (bad flag, corrupt archive, data
anomaly, unreachable server) is one of these; the CLI prints its message as a
single line and exits with its code. Anything else is a bug.
"""


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


class NotBuiltError(CifarflowError):
    """A command that is planned but not implemented yet."""

    exit_code = 64
