"""Pretrained weights for the transfer bases: where they come from, and one clear line when they cannot be had.

A trial's `weights` is one of:

- `imagenet`: the file Keras's own `keras.applications` constructor downloads
  for the base without its top (same URL, same md5, same cache: Keras's
  `get_file` into `$KERAS_HOME/models`, default `~/.keras/models`). A
  cluster without internet access serves the same files from a mirror:
  `CIFARFLOW_IMAGENET_WEIGHTS_URL` replaces Keras's base URL
  (`https://storage.googleapis.com/tensorflow/keras-applications/`), the file
  names and checksums stay Keras's.
- an `http(s)://` URL with its checksum as a fragment,
  `...#md5=HEX` or `...#sha256=HEX`, downloaded into the same cache;
- a local weights file (`.h5` as Keras downloads them, or Keras 3 `.weights.h5`);
- `none`: random initialisation.

Every failure is one line and a typed error: no connection, an HTTP error or
a cut transfer is a `RemoteError`; a checksum mismatch or a file that does
not fit the base is an `IntegrityError`; a missing local file or a URL
without checksum is a `BadInputError`. Nothing falls back to random weights
silently: a trial asked for ImageNet weights trains with them or not at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path

import keras

from cifarflow.errors import BadInputError, IntegrityError, RemoteError

_log = logging.getLogger(__name__)

MIRROR_ENV = "CIFARFLOW_IMAGENET_WEIGHTS_URL"
KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
# urllib's urlretrieve (what Keras's get_file uses) has no timeout of its own:
# a cluster that drops outbound packets would hang the trial instead of failing it.
DOWNLOAD_TIMEOUT_S = 60.0
_CHECKSUMS = {"md5": 32, "sha256": 64}


@dataclasses.dataclass(frozen=True)
class KerasWeightsFile:
    """The no-top ImageNet file of one base, as Keras's application module names it.

    Attributes:
        folder: the folder under Keras's base URL.
        file_name: the file (also its name in the Keras cache).
        md5: the `file_hash` Keras checks it against.
    """

    folder: str
    file_name: str
    md5: str


# From keras/src/applications/{densenet,resnet,xception}.py (Keras 3.15.1):
# tests/components/test_imagenet_weights.py checks these against the installed source.
IMAGENET_NO_TOP: dict[str, KerasWeightsFile] = {
    "densenet121": KerasWeightsFile(
        "densenet",
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "30ee3e1110167f948a6b9946edeeb738",
    ),
    "resnet50": KerasWeightsFile(
        "resnet",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
    ),
    "xception": KerasWeightsFile(
        "xception",
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "b0042744bf5b25fce3cb969f33bebb97",
    ),
}


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """Where one trial's base weights come from.

    Attributes:
        label: what the log line calls them, e.g. "ImageNet (Keras's densenet121 file)".
        url: the download address, or None for a local file.
        path: the local file, or None for a download.
        file_name: the name in the Keras cache (downloads only).
        file_hash: the md5 or sha256 the download must have (downloads only).
    """

    label: str
    url: str | None = None
    path: Path | None = None
    file_name: str | None = None
    file_hash: str | None = None


def _is_url(weights: str) -> bool:
    return urllib.parse.urlsplit(weights).scheme in ("http", "https")


def _split_checksum(url: str) -> tuple[str, str]:
    """(URL without fragment, hex checksum) from `URL#sha256=HEX` or `URL#md5=HEX`."""
    parts = urllib.parse.urlsplit(url)
    algorithm, _, digest = parts.fragment.partition("=")
    digest = digest.lower()
    if _CHECKSUMS.get(algorithm) != len(digest) or any(c not in "0123456789abcdef" for c in digest):
        bare = urllib.parse.urlunsplit(parts._replace(fragment=""))
        raise BadInputError(
            f"a weights URL needs its checksum as a fragment: {bare}#sha256=HEX (or #md5=HEX)"
        )
    return urllib.parse.urlunsplit(parts._replace(fragment="")), digest


def resolve(
    architecture: str, weights: str, environ: Mapping[str, str] = os.environ
) -> WeightsSource | None:
    """Where `weights` for `architecture` come from; None for `none` (random initialisation).

    Raises:
        BadInputError: an unknown base for `imagenet`, a missing local file, a URL without checksum.
    """
    if weights == "none":
        return None
    if weights == "imagenet":
        known = IMAGENET_NO_TOP.get(architecture)
        if known is None:
            raise BadInputError(f"no ImageNet weights known for {architecture}")
        base = environ.get(MIRROR_ENV) or KERAS_APPLICATIONS_URL
        return WeightsSource(
            label=f"ImageNet (Keras's {architecture} no-top file)",
            url=f"{base.rstrip('/')}/{known.folder}/{known.file_name}",
            file_name=known.file_name,
            file_hash=known.md5,
        )
    if _is_url(weights):
        url, digest = _split_checksum(weights)
        name = Path(urllib.parse.urlsplit(url).path).name or f"{architecture}_weights.h5"
        return WeightsSource(label="weights file", url=url, file_name=name, file_hash=digest)
    path = Path(weights)
    if not path.is_file():
        raise BadInputError(
            f"weights file {weights} does not exist (use 'imagenet', 'none' or a file path)"
        )
    return WeightsSource(label="weights file", path=path)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def fetch(source: WeightsSource, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local file of `source`: downloaded (or found) in the Keras cache, checksum checked.

    Args:
        source: from `resolve`.
        cache_dir: the Keras cache root (default: Keras's, `$KERAS_HOME` or `~/.keras`).

    Raises:
        RemoteError: the server cannot be reached, answers an HTTP error, or the transfer is cut.
        IntegrityError: the file does not have the expected checksum.
    """
    if source.path is not None:
        return source.path
    assert source.url is not None and source.file_name is not None
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            found = keras.utils.get_file(
                source.file_name,
                source.url,
                file_hash=source.file_hash,
                cache_subdir="models",
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
    except ValueError:  # get_file's "Incomplete or corrupted file detected"
        # Keras leaves the bad file in its cache; its next get_file finds the
        # checksum wrong and downloads again, so nothing corrupt is ever loaded.
        raise IntegrityError(
            f"weights downloaded from {source.url} fail their checksum "
            f"(expected {source.file_hash}): the file is corrupt or not the one named"
        ) from None
    except Exception as exc:  # get_file re-raises every URLError as a bare Exception
        reason = " ".join(str(exc).split())
        raise RemoteError(
            f"cannot download weights from {source.url}: {reason}; without internet access "
            f"set {MIRROR_ENV} to a mirror of {KERAS_APPLICATIONS_URL}, or weights: to a local file"
        ) from None
    return Path(found)


def load_into(base: keras.Model, path: Path, architecture: str) -> None:
    """Loads the weights file `path` into `base`, as Keras's constructors do after downloading.

    Raises:
        IntegrityError: the file is unreadable or its weights do not fit `base`.
    """
    try:
        base.load_weights(str(path))
    except (ValueError, OSError, KeyError) as exc:
        first_line = next(
            (line for line in str(exc).splitlines() if line.strip()), type(exc).__name__
        )
        raise IntegrityError(
            f"weights file {path} does not fit the {architecture} base: {first_line.strip()}"
        ) from None


def pretrained_base(
    constructor,
    architecture: str,
    weights: str,
    input_shape: tuple[int, int, int],
    cache_dir: str | os.PathLike | None = None,
) -> keras.Model:
    """The base without its top, with the trial's weights, and one log line saying which.

    Args:
        constructor: the `keras.applications` function (DenseNet121, ...).
        architecture: its name in the trial config.
        weights: the trial's `weights` value.
        input_shape: the base's input shape.
        cache_dir: the Keras cache root (default: Keras's).
    """
    source = resolve(architecture, weights)
    # Fetched before the base is built: a trial that cannot have its weights fails at once.
    path = fetch(source, cache_dir) if source is not None else None
    base = constructor(include_top=False, weights=None, input_shape=input_shape)
    if source is None or path is None:
        _log.info("%s base: random initialisation (weights: none)", architecture)
        return base
    load_into(base, path, architecture)
    origin = source.url if source.url is not None else "a local file"
    checksum = f", {_algorithm(source.file_hash)} {source.file_hash}" if source.file_hash else ""
    _log.info("%s base: %s %s from %s%s", architecture, source.label, path, origin, checksum)
    return base


def _algorithm(digest: str | None) -> str:
    return "sha256" if digest is not None and len(digest) == 64 else "md5"
