"""Every kustomize folder renders, and what it renders is valid Kubernetes 1.32."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.k8s.manifests import (
    KUBERNETES_VERSION,
    OLDEST_KUBERNETES_VERSION,
    OVERLAYS,
    all_folders,
    folder_id,
    render,
    render_text,
    venv_tool,
)

FOLDERS = all_folders()


def validate(path: Path, version: str = KUBERNETES_VERSION) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            venv_tool("kubernetes-validate"),
            "--strict",
            "--quiet",
            "--kubernetes-version",
            version,
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_overlays_users_are_told_about_exist():
    names = {p.name for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").is_file()}
    assert {"local", "production", "production-gpu", "canary"} <= names


@pytest.mark.parametrize("version", [KUBERNETES_VERSION, OLDEST_KUBERNETES_VERSION])
@pytest.mark.parametrize("folder", FOLDERS, ids=folder_id)
def test_renders_and_validates_strictly(folder, version, tmp_path):
    objects = render(folder)
    assert objects, f"{folder_id(folder)} renders nothing"
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render_text(folder))
    result = validate(rendered, version)
    assert result.returncode == 0, (
        f"{folder_id(folder)} is not valid Kubernetes {version}:\n{result.stdout}{result.stderr}"
    )
    # kubernetes-validate only warns, and passes, on a kind it has no schema
    # for (a CRD, or a core kind with a mistyped apiVersion): none may be here.
    # The optional Prometheus Operator component is validated knowingly in
    # test_user_settings.py.
    assert "Couldn't find schema" not in result.stdout + result.stderr, (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize("folder", FOLDERS, ids=folder_id)
def test_object_names_are_unique(folder):
    ids = [
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in render(folder)
    ]
    assert len(ids) == len(set(ids))


def test_strict_validation_rejects_a_misspelt_field(tmp_path):
    """The validator really is strict: a typo a lenient apply would drop fails."""
    doc = tmp_path / "typo.yaml"
    doc.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
        "spec:\n  selectr: {app: x}\n  ports: [{port: 80}]\n"
    )
    result = validate(doc)
    assert result.returncode != 0
    assert "selectr" in result.stdout + result.stderr
