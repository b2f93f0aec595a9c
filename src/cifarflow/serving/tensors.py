"""numpy arrays <-> `tensorflow.TensorProto`, without TensorFlow.

Used by the model server (requests in, results out), the gateway and the
client. Numbers travel in `tensor_content` (raw little-endian bytes: the
fastest form, and what `tf.make_tensor_proto` produces); strings in
`string_val`. Decoding accepts every form a stock client may send
(`float_val`, `int_val`, ..., a single value broadcast to the shape).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cifarflow.serving.errors import InvalidInput, PayloadTooLarge

# TensorFlow's rule lets one value fill a whole shape: a few bytes on the wire
# could ask for gigabytes. No served input comes near this.
MAX_BROADCAST_BYTES = 64 * 1024 * 1024
MAX_RANK = 32
_MAX_EXTENT = np.iinfo(np.intp).max // 16

# tensorflow/core/framework/types.proto values, the ones served models use.
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_INT64, DT_BOOL, DT_HALF, DT_UINT32, DT_UINT64, DT_UINT16 = 9, 10, 19, 22, 23, 17

NUMPY_FOR_DTYPE: dict[int, np.dtype] = {
    DT_FLOAT: np.dtype("<f4"),
    DT_DOUBLE: np.dtype("<f8"),
    DT_INT32: np.dtype("<i4"),
    DT_UINT8: np.dtype("u1"),
    DT_INT16: np.dtype("<i2"),
    DT_INT8: np.dtype("i1"),
    DT_INT64: np.dtype("<i8"),
    DT_BOOL: np.dtype("?"),
    DT_HALF: np.dtype("<f2"),
    DT_UINT16: np.dtype("<u2"),
    DT_UINT32: np.dtype("<u4"),
    DT_UINT64: np.dtype("<u8"),
}
DTYPE_NAMES = {
    DT_FLOAT: "DT_FLOAT",
    DT_DOUBLE: "DT_DOUBLE",
    DT_INT32: "DT_INT32",
    DT_UINT8: "DT_UINT8",
    DT_INT16: "DT_INT16",
    DT_INT8: "DT_INT8",
    DT_STRING: "DT_STRING",
    DT_INT64: "DT_INT64",
    DT_BOOL: "DT_BOOL",
    DT_HALF: "DT_HALF",
    DT_UINT16: "DT_UINT16",
    DT_UINT32: "DT_UINT32",
    DT_UINT64: "DT_UINT64",
}
# Which repeated field holds the values of each dtype when tensor_content is empty.
_VAL_FIELD = {
    DT_FLOAT: "float_val",
    DT_DOUBLE: "double_val",
    DT_INT32: "int_val",
    DT_UINT8: "int_val",
    DT_INT16: "int_val",
    DT_INT8: "int_val",
    DT_INT64: "int64_val",
    DT_BOOL: "bool_val",
    DT_HALF: "half_val",
    DT_UINT16: "int_val",
    DT_UINT32: "uint32_val",
    DT_UINT64: "uint64_val",
}


def dtype_for_numpy(array: np.ndarray) -> int:
    if array.dtype.kind in "OSU":
        return DT_STRING
    for code, dtype in NUMPY_FOR_DTYPE.items():
        if array.dtype == dtype or (
            array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize
        ):
            return code
    raise InvalidInput(f"unsupported array dtype {array.dtype}")


def to_tensor_proto(value: Any, dtype: int | None = None):
    """An ndarray (or nested list) as a TensorProto."""
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto()
    fill_tensor_proto(proto, value, dtype)
    return proto


def fill_tensor_proto(proto, value: Any, dtype: int | None = None) -> None:
    """Writes an ndarray (or nested list) into an empty TensorProto in place.

    For a map entry of a request or response (`response.outputs[name]`):
    building a proto and copying it in would serialise the values twice.
    """
    array = np.asarray(value)
    code = dtype if dtype is not None else dtype_for_numpy(array)
    proto.dtype = code
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add(size=size)
    if code == DT_STRING:
        proto.string_val.extend(
            v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)
        )
    else:
        proto.tensor_content = np.ascontiguousarray(array, dtype=NUMPY_FOR_DTYPE[code]).tobytes()


def shape_of(proto) -> tuple[int, ...]:
    if proto.tensor_shape.unknown_rank:
        raise InvalidInput("tensor shape has unknown rank")
    return tuple([d.size for d in proto.tensor_shape.dim])


def from_tensor_proto(proto, name: str = "tensor") -> np.ndarray:
    """A TensorProto as an ndarray (strings as an object array of bytes)."""
    shape = shape_of(proto)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{name}: negative dimension in shape {list(shape)}")
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"{name}: rank {len(shape)} is over the limit of {MAX_RANK}")
    count, extent = 1, 1
    for d in shape:  # Python ints: np.prod would wrap around silently for huge shapes
        count *= d
        extent *= max(d, 1)
    if extent > _MAX_EXTENT:  # numpy refuses such a shape even when a zero makes it empty
        raise InvalidInput(f"{name}: shape {list(shape)} is too large")
    if proto.dtype == DT_STRING:
        values = list(proto.string_val)
        array = np.empty(len(values), dtype=object)
        array[:] = values
    elif proto.dtype in NUMPY_FOR_DTYPE:
        dtype = NUMPY_FOR_DTYPE[proto.dtype]
        if proto.tensor_content:
            if len(proto.tensor_content) != count * dtype.itemsize:
                raise InvalidInput(
                    f"{name}: tensor_content has {len(proto.tensor_content)} bytes, shape {list(shape)} "
                    f"of {DTYPE_NAMES[proto.dtype]} needs {count * dtype.itemsize}"
                )
            return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
        field = getattr(proto, _VAL_FIELD[proto.dtype])
        try:
            if proto.dtype == DT_HALF:
                array = np.asarray(field, dtype=np.uint16).view(np.float16)
            else:
                array = np.asarray(field, dtype=dtype)
        except OverflowError:
            raise InvalidInput(
                f"{name}: values outside the range of {DTYPE_NAMES[proto.dtype]}"
            ) from None
    else:
        raise InvalidInput(f"{name}: unsupported tensor dtype {proto.dtype}")
    if array.size == count:
        return array.reshape(shape)
    if array.size == 1 and count > 1:  # TensorFlow's rule: one value fills the shape
        if count * array.itemsize > MAX_BROADCAST_BYTES:
            raise PayloadTooLarge(
                f"{name}: one value would fill shape {list(shape)}, "
                f"{count * array.itemsize} bytes; the limit is {MAX_BROADCAST_BYTES}"
            )
        return np.full(shape, array[0], dtype=array.dtype)
    raise InvalidInput(
        f"{name}: {array.size} values do not fill shape {list(shape)} ({count} values)"
    )
