"""A multipart/form-data body -> its fields, on python-multipart.

python-multipart is the parser under Starlette's (and so FastAPI's)
`request.form()`. The gateway calls it directly instead of through
`request.form()` because it already holds the whole body, within its limit,
and parses a large one off the event loop; the framework's form reader would
parse it on the loop and spool file parts to temporary files.

Limits come first: a form has at most `MAX_PARTS` parts and each part at most
`MAX_HEADERS_PER_PART` headers of `MAX_HEADER_BYTES`, so a body of many tiny
parts is refused at the first part too many, not after all of them.
`Content-Transfer-Encoding` is not applied: RFC 7578 §4.7 deprecates it for
form data and browsers never send it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from cifarflow.serving.errors import InvalidInput

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

# The classify form has two fields (file, top_k); leave room for a browser's extras.
MAX_PARTS = 16
MAX_HEADERS_PER_PART = 8
MAX_HEADER_BYTES = 4096

# The parser logs a warning for every malformed body before it raises; the
# client already gets the reason in its 400, and logs are not for attackers to fill.
logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)


@dataclasses.dataclass(frozen=True)
class Form:
    """What a form carried.

    Attributes:
        fields: the payload of each named part, as sent (the last part wins for a repeated name).
    """

    fields: dict[str, bytes]

    def text(self, name: str) -> str | None:
        """A field as text (UTF-8, undecodable bytes replaced), or None when absent."""
        value = self.fields.get(name)
        return None if value is None else value.decode("utf-8", "replace")


def boundary_of(content_type: str) -> bytes:
    """The `boundary` parameter of a multipart Content-Type.

    >>> boundary_of('Multipart/Form-Data; BOUNDARY="a b"')
    b'a b'
    """
    _, options = parse_options_header(content_type)
    boundary = {key.lower(): value for key, value in options.items()}.get(b"boundary")
    if not boundary:
        raise InvalidInput("multipart body without a boundary parameter")
    return boundary


class _FormReader:
    """python-multipart's callbacks, collecting each part's name and payload."""

    def __init__(self) -> None:
        self.fields: dict[str, bytes] = {}
        self.ended = False
        self._parts = 0
        self._headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._data: list[bytes] = []

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise InvalidInput(f"multipart body has more than {MAX_PARTS} parts")
        self._headers, self._data = {}, []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._field).strip().lower()] = bytes(self._value).strip()
        self._field.clear()
        self._value.clear()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(data[start:end])

    def _part_end(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if name:
            self.fields[name.decode("latin-1")] = b"".join(self._data)
        self._data = []

    def _end(self) -> None:
        self.ended = True


def read_form(content_type: str, body: bytes) -> Form:
    """Parses a whole multipart/form-data body.

    Args:
        content_type: the request's Content-Type, with its boundary.
        body: the body, already within the server's body limit.

    Raises:
        InvalidInput: no boundary, too many parts or headers, a malformed or cut-off body.
    """
    reader = _FormReader()
    try:
        parser = MultipartParser(
            boundary_of(content_type),
            reader.callbacks(),
            max_header_count=MAX_HEADERS_PER_PART,
            max_header_size=MAX_HEADER_BYTES,
        )
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, FormParserError) as exc:
        raise InvalidInput(f"malformed multipart body: {exc}") from None
    if not reader.ended:
        raise InvalidInput("malformed multipart body: it ends before its closing boundary")
    return Form(reader.fields)
