"""The gateway's multipart/form-data reader, on bodies real clients encode and on broken ones."""

from __future__ import annotations

import time

import pytest
import requests

from cifarflow.serving.errors import InvalidInput
from cifarflow.serving.gateway.multipart_form import (
    MAX_HEADERS_PER_PART,
    MAX_PARTS,
    boundary_of,
    read_form,
)
from tests.serving.images import cifar_test_images, encode

PNG = encode(cifar_test_images()[0][0], "PNG")


def _encoded(files=None, data=None) -> tuple[str, bytes]:
    """A form as the `requests` client encodes it: its Content-Type and body."""
    prepared = requests.Request("POST", "http://gateway/", files=files, data=data).prepare()
    assert isinstance(prepared.body, bytes)
    return prepared.headers["Content-Type"], prepared.body


def _form(parts: list[tuple[list[str], bytes]], boundary: str = "B", end: bytes = b"--B--\r\n"):
    body = b"".join(
        f"--{boundary}\r\n".encode()
        + "".join(f"{h}\r\n" for h in headers).encode()
        + b"\r\n"
        + payload
        + b"\r\n"
        for headers, payload in parts
    )
    return f"multipart/form-data; boundary={boundary}", body + end


def test_a_client_encoded_upload_gives_the_file_bytes_and_text_fields():
    content_type, body = _encoded(
        files={"file": ("photo.png", PNG, "image/png")}, data={"top_k": "3", "note": "café"}
    )
    form = read_form(content_type, body)
    assert form.fields["file"] == PNG
    assert form.text("top_k") == "3"
    assert form.text("note") == "café"
    assert form.text("absent") is None


def test_a_payload_holding_the_boundary_text_without_crlf_is_kept_whole():
    payload = b"--B" + PNG + b"\r\n--Bx" + b"\r\n--"
    content_type, body = _form([(['Content-Disposition: form-data; name="file"'], payload)])
    assert read_form(content_type, body).fields["file"] == payload


def test_quoted_names_and_boundaries_and_any_case_parameters():
    content_type, body = _form(
        [(['Content-Disposition: form-data; name="fi\\"le"; filename="a.png"'], b"x")],
        boundary="a b",
        end=b"--a b--\r\n",
    )
    for header in ('Multipart/Form-Data; BOUNDARY="a b"', content_type):
        assert read_form(header, body).fields == {'fi"le': b"x"}
    assert boundary_of('multipart/form-data; charset=utf-8; boundary="x;y"') == b"x;y"


def test_parts_without_a_name_are_skipped_and_a_repeated_name_keeps_the_last():
    content_type, body = _form(
        [
            (["Content-Disposition: form-data"], b"nameless"),
            (['Content-Disposition: form-data; name="file"'], b"first"),
            (['Content-Disposition: form-data; name="file"'], b"second"),
        ]
    )
    assert read_form(content_type, body).fields == {"file": b"second"}


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data", "multipart/form-data; boundary=", 'multipart/form-data; boundary=""'],
)
def test_no_boundary_is_one_clear_error(content_type):
    with pytest.raises(InvalidInput, match="without a boundary parameter"):
        read_form(content_type, b"--x--\r\n")


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9, 0.99])
def test_a_cut_off_body_is_malformed_not_a_shorter_file(keep):
    content_type, body = _encoded(files={"file": ("a.png", PNG)})
    with pytest.raises(InvalidInput, match="malformed multipart body"):
        read_form(content_type, body[: int(len(body) * keep)])


def test_a_body_that_does_not_start_with_its_boundary_is_malformed():
    content_type, body = _encoded(files={"file": ("a.png", PNG)})
    with pytest.raises(InvalidInput, match="malformed multipart body: .*boundary"):
        read_form(content_type.replace("boundary=", "boundary=other"), body)


def test_too_many_parts_are_refused_at_the_first_part_too_many():
    tiny = (['Content-Disposition: form-data; name="f"'], b"x")
    content_type, body = _form([tiny] * MAX_PARTS)
    assert read_form(content_type, body).fields == {"f": b"x"}

    content_type, body = _form([tiny] * 200_000)
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=f"more than {MAX_PARTS} parts"):
        read_form(content_type, body)
    assert time.monotonic() - started < 0.05  # parsing all 200,000 would take seconds


def test_too_many_or_too_long_part_headers_are_refused():
    many = ['Content-Disposition: form-data; name="file"'] + ["X-A: b"] * MAX_HEADERS_PER_PART
    with pytest.raises(InvalidInput, match="header count"):
        read_form(*_form([(many, b"x")]))
    long = ['Content-Disposition: form-data; name="file"; x="' + "y" * 10_000 + '"']
    with pytest.raises(InvalidInput, match="header size"):
        read_form(*_form([(long, b"x")]))
