"""Session fixtures for the serving tests: one exported test model, real images."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.images import cifar_test_images


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory) -> Path:
    """The test model (seed 0) exported once per session; TF is imported here."""
    from tests.serving.model_factory import export_test_model

    return export_test_model(tmp_path_factory.mktemp("export") / "model")


@pytest.fixture(scope="session")
def favour7_model(tmp_path_factory) -> Path:
    """A second version that answers class 7 (insects) for every image."""
    from tests.serving.model_factory import export_test_model

    return export_test_model(tmp_path_factory.mktemp("export7") / "model", seed=1, favour_class=7)


@pytest.fixture(scope="session")
def cifar():
    return cifar_test_images()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def model_server_for(model_dir: Path, store: Path, model_name: str) -> Iterator:
    """An in-process model server (gRPC on a free port, no REST) on `model_dir` published as version 1."""
    from cifarflow.serving.model_server.server import ModelServer, ModelServerConfig
    from cifarflow.serving.store import publish_model

    publish_model(model_dir, store, model_name, {})
    server = ModelServer(
        ModelServerConfig(
            str(store), model_name, host="127.0.0.1", grpc_port=0, rest_port=-1, poll_interval_s=60
        )
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def explainable_model(tmp_path_factory) -> Path:
    """The trainer's real export (all three signatures, `explain` included) of an untrained ResNet-8."""
    from cifarflow.classes import COARSE_CLASS_NAMES
    from cifarflow.components.train.config import TrialConfig
    from cifarflow.components.train.export import export_saved_model
    from cifarflow.components.train.models.build import build_model

    out = tmp_path_factory.mktemp("explainable") / "model"
    out.mkdir()
    model = build_model(TrialConfig(architecture="resnet", depth=8)).inference
    export_saved_model(model, out, COARSE_CLASS_NAMES)
    return out
