"""The project's container images: one place for their names and tags.

The pipeline's components, the Dockerfiles' `make image` targets and the
Kubernetes manifests all take the image from here (the manifests' kustomize
`images:` entry is checked against it by a test). Tags follow the package
version, so a release pins code and image together.

To run your own build, give `cifarflow compile`/`submit` the flags
`--image-repository` and `--image-tag` (and `make image image-gpu` the
variables IMAGE_REPOSITORY and IMAGE_TAG). The environment variables
`CIFARFLOW_IMAGE_REPOSITORY` and `CIFARFLOW_IMAGE_TAG` still work as a
fallback; a flag wins over them.
"""

from __future__ import annotations

import dataclasses
import os
import re

from cifarflow import __version__

DEFAULT_REPOSITORY = "ghcr.io/cifarflow/cifarflow"
REPOSITORY_ENV = "CIFARFLOW_IMAGE_REPOSITORY"
TAG_ENV = "CIFARFLOW_IMAGE_TAG"
GPU_SUFFIX = "-gpu"

# Docker's reference grammar, simplified: lowercase path components
# separated by '/', an optional registry host[:port] first; a tag is up to
# 128 word characters, dots and dashes, not starting with '.' or '-'. The
# GPU tag adds GPU_SUFFIX, so the tag given must leave room for it.
_REPOSITORY = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$"
)
_TAG = re.compile(rf"^[\w][\w.-]{{0,{127 - len(GPU_SUFFIX)}}}$")


def image_repository(override: str | None = None) -> str:
    """The repository: `override`, else $CIFARFLOW_IMAGE_REPOSITORY, else the project's."""
    return override or os.environ.get(REPOSITORY_ENV) or DEFAULT_REPOSITORY


def image_tag(override: str | None = None) -> str:
    """The CPU image's tag: `override`, else $CIFARFLOW_IMAGE_TAG, else the package version."""
    return override or os.environ.get(TAG_ENV) or __version__


def cpu_image(repository: str | None = None, tag: str | None = None) -> str:
    """Components, gateway, sync: built FROM the pinned official TensorFlow CPU image."""
    return f"{image_repository(repository)}:{image_tag(tag)}"


def gpu_image(repository: str | None = None, tag: str | None = None) -> str:
    """The train step: built FROM the pinned official TensorFlow GPU image."""
    return f"{image_repository(repository)}:{image_tag(tag)}{GPU_SUFFIX}"


@dataclasses.dataclass(frozen=True)
class PipelineImages:
    """The images the pipeline's tasks run, and the Secrets to pull them with.

    Attributes:
        cpu: every task's image but the GPU ones.
        gpu: the image of tasks that request an accelerator (train).
        pull_secrets: names of `kubernetes.io/dockerconfigjson` Secrets in the
            run's namespace, for a private registry.
    """

    cpu: str
    gpu: str
    pull_secrets: tuple[str, ...] = ()

    @classmethod
    def resolve(
        cls,
        repository: str | None = None,
        tag: str | None = None,
        pull_secrets: tuple[str, ...] = (),
    ) -> PipelineImages:
        """Checks the flags' values and names both images.

        Raises:
            BadInputError: a repository with a tag or digest in it, a malformed
                tag, or a pull Secret name Kubernetes would refuse.
        """
        from cifarflow.errors import BadInputError

        if repository is not None and not _REPOSITORY.match(repository):
            raise BadInputError(
                f"--image-repository takes a repository without a tag, e.g. registry.example.com/you/cifarflow, got {repository!r}"
            )
        if tag is not None and not _TAG.match(tag):
            raise BadInputError(
                f"--image-tag takes a tag such as 0.1.0 or a commit id, got {tag!r}"
            )
        for name in pull_secrets:
            if not re.match(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", name):
                raise BadInputError(f"--image-pull-secret takes a Secret name, got {name!r}")
        return cls(
            cpu=cpu_image(repository, tag),
            gpu=gpu_image(repository, tag),
            pull_secrets=tuple(pull_secrets),
        )
