"""Reading and writing CIFAR-100's official pickle files, safely.

The official `train`, `test` and `meta` files are Python 2 pickles (protocol
2). Unpickling runs whatever callables a file names, so `load_pickle` uses an
unpickler that resolves only the three globals a numpy array needs; anything
else (`os.system`, `builtins.eval`, ...) is refused before it can run.

`dump_batch` writes the same format (Python 2 byte strings, protocol 2,
`numpy.core.multiarray._reconstruct`), so the shipped sample is readable by
every CIFAR loader, not only ours.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, cast

import numpy as np

from cifarflow.errors import IntegrityError


class UnsafePickleError(IntegrityError):
    """A pickle asked for a global outside the allow-list."""


def _plain_dtype(*args: Any) -> np.dtype:
    """`numpy.dtype` for numbers and bytes only: an object dtype would let arbitrary objects into the arrays."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise UnsafePickleError(f"refusing to unpickle an array of Python objects (dtype {dtype})")
    return dtype


_NUMPY_RECONSTRUCT = cast(Callable[..., np.ndarray], np.ndarray.__reduce__(np.zeros(0))[0])


def _empty_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's `_reconstruct` as pickles use it: an empty ndarray that BUILD then fills.

    Any other shape would allocate memory the stream never pays for in bytes.
    """
    if subtype is not np.ndarray or shape != (0,):
        raise UnsafePickleError(
            f"refusing to unpickle _reconstruct({getattr(subtype, '__name__', subtype)}, {shape!r}, ...)"
        )
    return _NUMPY_RECONSTRUCT(subtype, shape, dtype)


# numpy 1.x pickles name numpy.core; numpy 2.x renamed the module to numpy._core.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _empty_array,
    ("numpy._core.multiarray", "_reconstruct"): _empty_array,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
}
# What a malformed stream makes the C unpickler raise: opcodes applied to the
# wrong type (AttributeError, IndexError), a length field larger than memory
# (MemoryError: the unpickler allocates the declared size before reading).
_MALFORMED = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    struct.error,
    AttributeError,
    LookupError,
    MemoryError,
    OverflowError,
    RecursionError,
)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed in CIFAR files"
            ) from None


def load_pickle(data: bytes | BinaryIO, source: str = "pickle") -> Any:
    """Unpickles `data` allowing only numpy arrays, lists, dicts and strings.

    Args:
        data: the pickle bytes or a binary file object.
        source: a name for error messages (usually the file's path).

    Raises:
        UnsafePickleError: the pickle names a disallowed global.
        IntegrityError: the pickle is truncated or malformed.
    """
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        # latin1 maps Python 2 byte strings 1:1, which numpy needs for array data.
        return _RestrictedUnpickler(stream, encoding="latin1").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{source}: {exc}") from None
    except _MALFORMED as exc:
        raise IntegrityError(
            f"{source}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})"
        ) from None


# --- writer: just the opcodes the official files use ---------------------------------


def _str(value: str | bytes) -> bytes:
    raw = value.encode("latin1") if isinstance(value, str) else bytes(value)
    if len(raw) < 256:
        return b"U" + bytes([len(raw)]) + raw  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(raw)) + raw  # BINSTRING


def _int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])  # BININT1
    return b"J" + struct.pack("<i", value)  # BININT


def _obj(value: Any) -> bytes:
    if isinstance(value, (str, bytes)):
        return _str(value)
    if isinstance(value, (bool, np.bool_)):
        return b"\x88" if value else b"\x89"
    if isinstance(value, (int, np.integer)):
        return _int(int(value))
    if value is None:
        return b"N"
    if isinstance(value, list):
        return b"](" + b"".join(_obj(v) for v in value) + b"e"  # EMPTY_LIST MARK ... APPENDS
    if isinstance(value, tuple):
        return b"(" + b"".join(_obj(v) for v in value) + b"t"  # MARK ... TUPLE
    if isinstance(value, dict):
        return b"}(" + b"".join(_obj(k) + _obj(v) for k, v in value.items()) + b"u"
    if isinstance(value, np.ndarray):
        return _array(value)
    raise TypeError(f"cannot write {type(value).__name__} in a CIFAR pickle")


def _array(array: np.ndarray) -> bytes:
    if array.dtype != np.uint8:
        raise TypeError("CIFAR pickles hold uint8 arrays only")
    array = np.ascontiguousarray(array)
    dtype = (
        b"cnumpy\ndtype\n"
        + _obj(("u1", 0, 1))
        + b"R"  # dtype('u1', 0, 1)
        + _obj((3, "|", None, None, None, -1, -1, 0))
        + b"b"
    )
    state = (
        b"("
        + _int(1)
        + _obj(tuple(int(d) for d in array.shape))
        + dtype
        + b"\x89"
        + _str(array.tobytes())
        + b"t"
    )
    return (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"(cnumpy\nndarray\n"
        + _obj((0,))
        + _str("b")
        + b"tR"
        + state
        + b"b"
    )


def dump_batch(batch: dict[str, Any]) -> bytes:
    """Serialises a dict like the official files (protocol 2, Python 2 strings)."""
    return b"\x80\x02" + _obj(batch) + b"."


def make_batch(
    images_hwc: np.ndarray,
    coarse_labels: Sequence[int],
    fine_labels: Sequence[int],
    filenames: Sequence[str],
    batch_label: str,
) -> dict[str, Any]:
    """Builds an official-style batch dict from [N, 32, 32, 3] uint8 images."""
    data = np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2)).reshape(len(images_hwc), 3072)
    return {
        "filenames": list(filenames),
        "batch_label": batch_label,
        "fine_labels": [int(v) for v in fine_labels],
        "coarse_labels": [int(v) for v in coarse_labels],
        "data": data,
    }
