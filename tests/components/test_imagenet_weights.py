"""Pretrained transfer-base weights over real HTTP: loaded when they can be had, one clear line when not.

Nothing can be downloaded here, so a real DenseNet121 (random weights) is
saved in the legacy `.h5` layout Keras's ImageNet files use and served by
`http.server` on 127.0.0.1; the loading code goes through Keras's own
`get_file` and cache, as it would against Keras's bucket or a mirror.
"""

from __future__ import annotations

import hashlib
import http.server
import inspect
import logging
import re
import socket
import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from cifarflow.components.train.models import imagenet_weights
from cifarflow.components.train.models.imagenet_weights import (
    IMAGENET_NO_TOP,
    MIRROR_ENV,
    fetch,
    load_into,
    pretrained_base,
    resolve,
)
from cifarflow.errors import BadInputError, IntegrityError, RemoteError

SHAPE = (32, 32, 3)
KERAS_FILE = IMAGENET_NO_TOP["densenet121"].file_name


def _save_legacy_h5(model: keras.Model, path: Path) -> bytes:
    """Writes `model`'s weights in the legacy HDF5 layout of Keras's downloadable files."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path.read_bytes()


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory) -> tuple[list[np.ndarray], bytes]:
    """A DenseNet121 without top (seeded random weights): its weights and its `.h5` bytes."""
    keras.utils.set_random_seed(3)
    model = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=SHAPE)
    data = _save_legacy_h5(model, tmp_path_factory.mktemp("weights") / "densenet.h5")
    return [np.asarray(w) for w in model.get_weights()], data


@pytest.fixture(scope="module")
def fresh_base() -> keras.Model:
    """A DenseNet121 without top to load files into (built once: building is the slow part)."""
    return keras.applications.DenseNet121(include_top=False, weights=None, input_shape=SHAPE)


@pytest.fixture(scope="module")
def small_model_h5(tmp_path_factory) -> bytes:
    """Weights of another model: they cannot fit a DenseNet121."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    return _save_legacy_h5(model, tmp_path_factory.mktemp("other") / "other.h5")


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves `files` by path; a path under /cut/ announces the whole file and sends half."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.requests.append(self.path)
        cut = self.path.startswith("/cut/")
        body = self.files.get(self.path.removeprefix("/cut") if cut else self.path)
        if body is None:
            self.send_error(404, "File not found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if cut else body)
        if cut:
            self.close_connection = True

    def log_message(self, format, *args) -> None:  # noqa: A002 (http.server's signature)
        pass


@pytest.fixture
def server(saved_base, small_model_h5):
    """(base URL, the paths asked for) of a local file server for this test."""
    handler = type(
        "Handler",
        (_Files,),
        {
            "files": {
                f"/densenet/{KERAS_FILE}": saved_base[1],
                "/mirror/densenet.h5": saved_base[1],
                "/other.h5": small_model_h5,
            },
            "requests": [],
        },
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_weights_from_a_url_load_exactly_and_one_line_says_which(
    saved_base, server, tmp_path, caplog, monkeypatch
):
    expected, data = saved_base
    url, requests = server
    weights = f"{url}/mirror/densenet.h5#md5={_md5(data)}"
    with caplog.at_level(logging.INFO, logger=imagenet_weights.__name__):
        base = pretrained_base(
            keras.applications.DenseNet121, "densenet121", weights, SHAPE, cache_dir=tmp_path
        )
    loaded = base.get_weights()
    assert len(loaded) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(loaded, expected, strict=True))
    (line,) = [r.getMessage() for r in caplog.records]
    assert (
        line.startswith("densenet121 base: weights file ")
        and f"from {url}/mirror/densenet.h5" in line
    )
    assert f"md5 {_md5(data)}" in line
    # In Keras's cache now: a second trial does not download again.
    assert (tmp_path / "models" / "densenet.h5").read_bytes() == data
    fetch(resolve("densenet121", weights), cache_dir=tmp_path)
    assert requests == ["/mirror/densenet.h5"]


def test_imagenet_asks_the_mirror_for_keras_file_and_checks_keras_checksum(
    server, tmp_path, monkeypatch
):
    url, requests = server
    monkeypatch.setenv(MIRROR_ENV, url + "/")
    source = resolve("densenet121", "imagenet")
    assert source is not None and source.file_hash == IMAGENET_NO_TOP["densenet121"].md5
    # The mirror serves our random DenseNet under Keras's name: not the ImageNet file.
    with pytest.raises(IntegrityError) as failure:
        fetch(source, cache_dir=tmp_path)
    assert requests == [f"/densenet/{KERAS_FILE}"]
    message = str(failure.value)
    assert "\n" not in message and "fail their checksum" in message
    assert IMAGENET_NO_TOP["densenet121"].md5 in message


def test_without_a_mirror_imagenet_is_keras_own_url(monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    source = resolve("densenet121", "imagenet")
    assert source is not None
    assert source.url == (
        "https://storage.googleapis.com/tensorflow/keras-applications/densenet/" + KERAS_FILE
    )


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.mark.parametrize(
    ("where", "error", "says"),
    [
        ("refused", RemoteError, "Connection refused"),
        ("/missing.h5", RemoteError, "404"),
        ("/cut/mirror/densenet.h5", RemoteError, "retrieval incomplete"),
        ("wrong-md5", IntegrityError, "fail their checksum"),
    ],
)
def test_a_download_that_fails_is_one_line_of_a_typed_error(
    where, error, says, saved_base, server, tmp_path
):
    url, _ = server
    digest = _md5(saved_base[1])
    weights = {
        "refused": f"http://127.0.0.1:{_refused_port()}/densenet.h5#md5={digest}",
        "wrong-md5": f"{url}/mirror/densenet.h5#md5={'0' * 32}",
    }.get(where, f"{url}{where}#md5={digest}")
    with pytest.raises(error) as failure:
        fetch(resolve("densenet121", weights), cache_dir=tmp_path)
    message = str(failure.value)
    assert "\n" not in message and says in message, message
    assert weights.split("#")[0] in message


def test_weights_that_do_not_fit_the_base_are_one_line(
    small_model_h5, fresh_base, server, tmp_path
):
    url, _ = server
    weights = f"{url}/other.h5#md5={_md5(small_model_h5)}"
    path = fetch(resolve("densenet121", weights), cache_dir=tmp_path)
    with pytest.raises(IntegrityError) as failure:
        load_into(fresh_base, path, "densenet121")
    assert "\n" not in str(failure.value) and "does not fit the densenet121 base" in str(
        failure.value
    )


def test_a_truncated_local_file_is_one_line(saved_base, fresh_base, tmp_path):
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(saved_base[1][: len(saved_base[1]) // 3])
    path = fetch(resolve("densenet121", str(truncated)))
    with pytest.raises(IntegrityError) as failure:
        load_into(fresh_base, path, "densenet121")
    assert "\n" not in str(failure.value) and str(truncated) in str(failure.value)


@pytest.mark.parametrize(
    ("weights", "says"),
    [
        ("https://example.org/densenet.h5", "needs its checksum"),
        ("https://example.org/densenet.h5#md5=abc", "needs its checksum"),
        ("/nonexistent/weights.h5", "does not exist"),
    ],
)
def test_weights_that_cannot_work_are_refused_before_any_download(weights, says):
    with pytest.raises(BadInputError, match=says):
        resolve("densenet121", weights)


def test_the_cli_turns_an_unreachable_download_into_its_exit_code_and_one_line(
    sample_data, tmp_path, capsys
):
    from cifarflow.cli.main import main

    grid = tmp_path / "offline.yaml"
    grid.write_text(
        "name: offline\nbase: {architecture: densenet121, input_size: 32, epochs: 1, "
        f"weights: 'http://127.0.0.1:{_refused_port()}/densenet.h5#md5={'a' * 32}'}}\n"
        "trials:\n  - {}\n"
    )
    code = main(
        ["train", "--data", str(sample_data), "--config", str(grid), "--out", str(tmp_path / "out")]
    )
    assert code == RemoteError.exit_code
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "cannot download weights from http://127.0.0.1:" in err[0], err


@pytest.mark.parametrize("architecture", sorted(IMAGENET_NO_TOP))
def test_the_table_is_what_the_installed_keras_downloads(architecture):
    """Each base's file name, folder and md5 appear in Keras's own application module."""
    modules = {"densenet121": "densenet", "resnet50": "resnet", "xception": "xception"}
    module = __import__(f"keras.src.applications.{modules[architecture]}", fromlist=["_"])
    # Adjacent string literals joined, as Python reads them (xception.py splits its URL).
    source = re.sub(r'"\s*\n\s*"', "", inspect.getsource(module))
    known = IMAGENET_NO_TOP[architecture]
    assert known.md5 in source and f"keras-applications/{known.folder}/" in source
    # resnet.py builds the name from the base's: f"{weights_name}_weights_..._notop.h5".
    suffix = known.file_name.removeprefix(architecture)
    assert known.file_name in source or (f'"{architecture}"' in source and suffix in source)
