"""The project's container images: one place for their names and tags.

The pipeline's components, the Dockerfiles' `make image` targets and the
Kubernetes manifests all take the image from here (the manifests' kustomize
`images:` entry is checked against it by a test). Tags follow the package
version, so a release pins code and image together. Override the repository
with `CIFARFLOW_IMAGE_REPOSITORY` and the tag with `CIFARFLOW_IMAGE_TAG`, e.g.
to push to your own registry.
"""

from __future__ import annotations

import os

from cifarflow import __version__

DEFAULT_REPOSITORY = "ghcr.io/cifarflow/cifarflow"


def image_repository() -> str:
    return os.environ.get("CIFARFLOW_IMAGE_REPOSITORY", DEFAULT_REPOSITORY)


def image_tag() -> str:
    return os.environ.get("CIFARFLOW_IMAGE_TAG", __version__)


def cpu_image() -> str:
    """Components, gateway, sync: built FROM the pinned official TensorFlow CPU image."""
    return f"{image_repository()}:{image_tag()}"


def gpu_image() -> str:
    """The train step: built FROM the pinned official TensorFlow GPU image."""
    return f"{image_repository()}:{image_tag()}-gpu"
