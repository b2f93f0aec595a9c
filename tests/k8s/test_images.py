"""The container images: Dockerfiles linted and checked, tags from cifarflow.images,
upstream images from dockerfiles/upstream-images.txt.

No Docker engine runs here, so the images are never built in the tests:
hadolint and the static checks below are what stands between a Dockerfile
mistake and a failed `make image` on a user's machine.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from cifarflow import images
from tests.k8s.manifests import (
    K8S,
    REPO,
    constraint_pin,
    folder_id,
    pod_containers,
    render,
    serving_folders,
    venv_tool,
)

DOCKER = REPO / "dockerfiles"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "gpu": DOCKER / "Dockerfile.gpu"}
UPSTREAM_IMAGES = DOCKER / "upstream-images.txt"
TF_VERSION = constraint_pin("tensorflow")
# Which upstream image each Dockerfile builds FROM, by its role in UPSTREAM_IMAGES.
BASE_ROLE = {"cpu": "tensorflow", "gpu": "tensorflow-gpu"}


def upstream_images() -> dict[str, str]:
    """dockerfiles/upstream-images.txt: role -> image reference (NAME:TAG, or NAME:TAG@sha256:HEX)."""
    images_by_role = {}
    for line in UPSTREAM_IMAGES.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            role, image = line.split()
            assert role not in images_by_role, f"{role} is named twice"
            images_by_role[role] = image
    return images_by_role


def split_reference(image: str) -> tuple[str, str, str | None]:
    """NAME:TAG[@DIGEST] -> (NAME, TAG, DIGEST or None)."""
    reference, _, digest = image.partition("@")
    name, _, tag = reference.rpartition(":")
    return name, tag, digest or None


def kustomize_image(component: str, name: str) -> str:
    """The reference a kustomize component's `images:` entry gives `name`, digest included."""
    document = yaml.safe_load((K8S / "components" / component / "kustomization.yaml").read_text())
    (entry,) = [i for i in document["images"] if i["name"] == name]
    reference = f"{entry.get('newName', name)}:{entry['newTag']}"
    return f"{reference}@{entry['digest']}" if entry.get("digest") else reference


@pytest.fixture
def default_image_names(monkeypatch):
    """cifarflow.images as a release sees it: no environment overrides."""
    monkeypatch.delenv("CIFARFLOW_IMAGE_REPOSITORY", raising=False)
    monkeypatch.delenv("CIFARFLOW_IMAGE_TAG", raising=False)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        pending += " " + stripped.rstrip("\\").strip() if pending else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(pending)
            pending = ""
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in logical
    ]


# --- lint --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_hadolint_passes(variant):
    result = subprocess.run(
        [
            venv_tool("hadolint"),
            "--no-color",
            "--config",
            str(DOCKER / "hadolint.yaml"),
            str(DOCKERFILES[variant]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints(tmp_path):
    """The configuration catches what the static checks below care about."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM quay.io/someone/tensorflow:latest\nRUN pip install tensorflow\n")
    result = subprocess.run(
        [venv_tool("hadolint"), "--no-color", "--config", str(DOCKER / "hadolint.yaml"), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    for rule in (
        "DL3007",
        "DL3013",
        "DL3026",
        "DL3042",
    ):  # latest, unpinned pip, registry, pip cache
        assert rule in result.stdout


# --- static checks -------------------------------------------------------------------


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_built_from_the_upstream_image_named_in_one_place(variant):
    froms = [args for op, args in instructions(DOCKERFILES[variant]) if op == "FROM"]
    assert froms == [upstream_images()[BASE_ROLE[variant]]]


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_the_build_checks_every_pipeline_step_can_run(variant):
    """`cifarflow --version` alone passed with two component packages missing (the verbs import lazily)."""
    package_install = [
        args
        for op, args in instructions(DOCKERFILES[variant])
        if op == "RUN" and "/src" in args and "pip install" in args
    ][-1]
    commands = [c.strip() for c in package_install.split("&&")]
    assert any(c.endswith("-m pip check") for c in commands)
    (check,) = [c for c in commands if "-m cifarflow.install_check" in c]
    assert check.split()[-3:] == ["/opt/cifarflow/bin/python", "-m", "cifarflow.install_check"], (
        "the venv's Python, no options"
    )
    assert commands.index(check) > [i for i, c in enumerate(commands) if "pip install" in c][0], (
        "after the install"
    )


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_runs_as_a_fixed_non_root_user(variant):
    users = [args for op, args in instructions(DOCKERFILES[variant]) if op == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric uid, so runAsNonRoot can verify it"
    for workload_folder in serving_folders():
        for obj in render(workload_folder):
            if obj["kind"] != "Deployment":
                continue
            pod = obj["spec"]["template"]["spec"]
            if any(c["image"].startswith(images.DEFAULT_REPOSITORY) for c in pod_containers(pod)):
                assert str(pod["securityContext"]["runAsUser"]) == uid, (
                    f"{folder_id(workload_folder)}: manifests and image agree on the uid"
                )


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_every_pip_install_uses_the_constraints(variant):
    installs = [
        args
        for op, args in instructions(DOCKERFILES[variant])
        if op == "RUN" and "pip" in args and " install" in args
    ]
    assert len(installs) >= 2, "dependencies and the package"
    for args in installs:
        for command in re.split(r"&&|;", args):
            if re.search(r"\bpip\b.*\binstall\b", command):
                assert "-c /src/requirements/constraints.txt" in command, command
    package_install = installs[-1]
    assert "check" in package_install, "pip check after installing the package"


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_entrypoint_is_the_console_script(variant):
    ops = dict(instructions(DOCKERFILES[variant]))
    assert ops["ENTRYPOINT"] == '["cifarflow"]'


def test_cpu_and_gpu_dockerfiles_differ_only_in_their_base_image():
    cpu, gpu = (instructions(p) for p in DOCKERFILES.values())
    assert [i for i in cpu if i[0] != "FROM"] == [i for i in gpu if i[0] != "FROM"]


def test_dockerignore_sends_the_package_and_nothing_private():
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: new files stay out unless named"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert setup["options.packages.find"]["where"] in allowed
    assert {
        "setup.cfg",
        "pyproject.toml",
        "README.md",
        "requirements/constraints.txt",
        "requirements/base.in",
    } <= allowed
    assert not allowed & {".venv", ".git", "data", "runs", "k8s"}
    for path in allowed:
        assert (REPO / path).exists(), f".dockerignore lets in {path}, which does not exist"


# --- one place for image names ---------------------------------------------------------


def test_manifests_project_image_is_cifarflow_images_cpu_image(default_image_names):
    component = yaml.safe_load((K8S / "components" / "images" / "kustomization.yaml").read_text())
    (entry,) = [i for i in component["images"] if i["name"] == "cifarflow"]
    assert f"{entry['newName']}:{entry['newTag']}" == images.cpu_image()
    for folder in serving_folders():
        for obj in render(folder):
            if obj["kind"] == "Deployment":
                for c in pod_containers(obj["spec"]["template"]["spec"]):
                    if not c["image"].startswith("tensorflow/serving:"):
                        assert c["image"] == images.cpu_image(), f"{folder_id(folder)}/{c['name']}"


# --- one place for the upstream images ----------------------------------------------------


def test_upstream_images_follow_the_pinned_python_packages():
    """The base image's TensorFlow is the one the constraints pin, so pip keeps it; TF Serving
    is the release the tensorflow-serving-api pin speaks to (and the model server mimics)."""
    names = {role: split_reference(image)[:2] for role, image in upstream_images().items()}
    serving_pin = constraint_pin("tensorflow-serving-api")
    assert names == {
        "tensorflow": ("tensorflow/tensorflow", TF_VERSION),
        "tensorflow-gpu": ("tensorflow/tensorflow", f"{TF_VERSION}-gpu"),
        "serving": ("tensorflow/serving", serving_pin),
        "serving-gpu": ("tensorflow/serving", f"{serving_pin}-gpu"),
    }
    for image in upstream_images().values():
        digest = split_reference(image)[2]
        assert digest is None or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), image


def test_manifests_serving_images_are_the_upstream_ones():
    images_by_role = upstream_images()
    assert kustomize_image("images", "tensorflow/serving") == images_by_role["serving"]
    assert kustomize_image("gpu-serving", "tensorflow/serving") == images_by_role["serving-gpu"]


def test_every_rendered_tf_serving_container_runs_an_upstream_image():
    """No workload folder names a TensorFlow Serving tag of its own; GPU overlays run the -gpu one."""
    allowed = {upstream_images()["serving"], upstream_images()["serving-gpu"]}
    seen = set()
    for folder in serving_folders():
        for obj in render(folder):
            if obj["kind"] != "Deployment":
                continue
            for c in pod_containers(obj["spec"]["template"]["spec"]):
                if c["image"].startswith("tensorflow/serving"):
                    assert c["image"] in allowed, f"{folder_id(folder)}/{c['name']}: {c['image']}"
                    seen.add(c["image"])
    assert seen == allowed, "both the CPU and the GPU serving image are used by some overlay"


def test_upstream_images_file_is_what_the_release_inspects():
    """The release workflow's `docker manifest inspect` loop reads this file; keep its two columns."""
    lines = [
        line
        for line in UPSTREAM_IMAGES.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert len(lines) == len(upstream_images()) == 4
    assert all(len(line.split()) == 2 for line in lines)


@pytest.mark.parametrize("target, image", [("image", "cpu_image"), ("image-gpu", "gpu_image")])
def test_make_targets_tag_from_cifarflow_images(target, image, default_image_names):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIFARFLOW_IMAGE_")}
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", target, "IMAGE_BUILDER=echo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    dockerfile = "dockerfiles/Dockerfile.gpu" if target == "image-gpu" else "dockerfiles/Dockerfile"
    assert result.stdout.split() == ["build", "-f", dockerfile, "-t", getattr(images, image)(), "."]


def test_the_documented_registry_override_retargets_every_project_image(
    tmp_path, default_image_names
):
    """docs/kubernetes.md tells users how to run their own build; that must work."""
    guide = (REPO / "docs" / "kubernetes.md").read_text()
    (override,) = re.findall(r"kustomize edit set image (\S+)=(\S+)", guide)
    name, target = override
    new_name, _, new_tag = target.rpartition(":")
    overlay = tmp_path / "my-overlay"
    overlay.mkdir()
    production = os.path.relpath(K8S / "overlays" / "production", overlay)
    overlay.joinpath("kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [production],
                "images": [{"name": name, "newName": new_name, "newTag": new_tag}],
            }
        )
    )
    project_images = {
        c["image"]
        for obj in render(overlay)
        if obj["kind"] == "Deployment"
        for c in pod_containers(obj["spec"]["template"]["spec"])
        if not c["image"].startswith("tensorflow/serving:")
    }
    assert project_images == {target}
