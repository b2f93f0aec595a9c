"""Submitting a compiled pipeline to a Kubeflow Pipelines cluster with `kfp.Client`.

The client creates the experiment if it does not exist (or reuses it),
creates a run from the compiled package, and can wait for its outcome.
The API token comes from an environment variable or a mounted file, never
from a flag's value, so it cannot leak into shell history or process lists.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from cifarflow.errors import BadInputError, RemoteError

TOKEN_ENV = "KFP_TOKEN"
FINAL_STATES = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"}


@dataclasses.dataclass(frozen=True)
class SubmitOptions:
    """Where and how to submit.

    Attributes:
        host: the KFP API endpoint, e.g. `http://localhost:8080` (port-forward of
            ml-pipeline-ui) or `https://kubeflow.example.com/pipeline`.
        experiment: experiment name; created when missing.
        run_name: run display name (default: pipeline name and a timestamp).
        namespace: Kubernetes namespace (multi-user Kubeflow profiles).
        token_file: file holding a bearer token (e.g. a mounted service-account token);
            otherwise `$KFP_TOKEN` is used when set.
        wait: block until the run finishes.
        timeout: seconds to wait at most.
        service_account: Kubernetes service account of the run's pods
            (k8s/kubeflow creates `cifarflow-pipeline`); None for the default.
        pipeline_root: the run's artifact root (`minio://…`, `s3://…`, `gs://…`);
            None for the package's or the namespace's default.
    """

    host: str
    experiment: str = "cifarflow"
    run_name: str | None = None
    namespace: str | None = None
    token_file: str | None = None
    wait: bool = False
    timeout: int = 6 * 3600
    service_account: str | None = None
    pipeline_root: str | None = None

    def token(self) -> str | None:
        if self.token_file:
            path = Path(self.token_file)
            if not path.is_file():
                raise BadInputError(f"token file {path} does not exist")
            return path.read_text().strip() or None
        return os.environ.get(TOKEN_ENV) or None


@dataclasses.dataclass(frozen=True)
class SubmitResult:
    run_id: str
    experiment_id: str
    run_url: str
    state: str | None  # the final state when waited for


# Multi-user Kubeflow Pipelines (2.15 to 2.17) gives each profile namespace an
# artifact-store key whose policy allows only these prefixes of the
# `mlpipeline` bucket: manifests/kustomize/base/installs/multi-user/
# pipelines-profile-controller/sync.py at 2.17.0, lines 484-487.
_MULTI_USER_PREFIXES = ("artifacts/", "private-artifacts/{ns}/", "private/{ns}/", "shared/")


def pipeline_root_warning(root: str | None, namespace: str | None) -> str | None:
    """A warning when a multi-user namespace's artifact key cannot write under `root`.

    Only roots in KFP's own `mlpipeline` bucket are judged; other buckets
    depend on credentials this command cannot see.
    """
    if (
        not root
        or not namespace
        or not root.startswith(("minio://mlpipeline/", "s3://mlpipeline/"))
    ):
        return None
    key = root.split("://", 1)[1][len("mlpipeline/") :].rstrip("/") + "/"
    if any(key.startswith(p.format(ns=namespace)) for p in _MULTI_USER_PREFIXES):
        return None
    return (
        f"on multi-user Kubeflow the namespace {namespace} may write artifacts only under "
        f"mlpipeline/private-artifacts/{namespace}/ (or artifacts/, shared/); {root} will be refused"
    )


def check_reachable(host: str, token: str | None, timeout: float = 5.0) -> None:
    """Fails fast with one line when the API cannot be reached.

    kfp.Client itself retries its health check for ~25 s with a traceback per
    attempt; a user who mistyped the host deserves one sentence at once.
    """
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = host.rstrip("/") + "/apis/v2beta1/healthz"
    try:
        response = requests.get(url, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise RemoteError(
            f"cannot reach the Kubeflow Pipelines API at {host}: {type(exc).__name__}"
        ) from None
    if response.status_code in (401, 403):
        raise RemoteError(
            f"{host} refused the credentials ({response.status_code}): set ${TOKEN_ENV} or --token-file"
        )
    if response.status_code >= 400:
        raise RemoteError(
            f"{host} is not a Kubeflow Pipelines API (GET /apis/v2beta1/healthz -> {response.status_code})"
        )


def submit(
    package: str | os.PathLike, parameters: dict[str, Any], options: SubmitOptions
) -> SubmitResult:
    """Creates a run of a compiled pipeline package on a KFP cluster.

    Args:
        package: compiled pipeline YAML (`cifarflow compile`).
        parameters: pipeline parameters; unset ones keep their compiled defaults.
        options: host, experiment, auth, wait.

    Returns:
        The run's id and URL, and its final state when `options.wait`.

    Raises:
        BadInputError: the package is missing.
        RemoteError: the API is unreachable, refuses the token or the run.
    """
    import kfp
    from kfp_server_api.exceptions import ApiException

    if not Path(package).is_file():
        raise BadInputError(
            f"pipeline package {package} does not exist; run 'cifarflow compile' first"
        )
    token = options.token()
    check_reachable(options.host, token)
    try:
        client = kfp.Client(host=options.host, existing_token=token, namespace=options.namespace)
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=parameters,
            run_name=options.run_name,
            experiment_name=options.experiment,
            namespace=options.namespace,
            service_account=options.service_account,
            pipeline_root=options.pipeline_root,
        )
        run_id = result.run_id
        run = client.get_run(run_id)
        state = None
        if options.wait:
            run = client.wait_for_run_completion(run_id, timeout=options.timeout)
            state = str(run.state)
    except ApiException as exc:
        raise RemoteError(
            f"the Kubeflow Pipelines API refused the request: {exc.status} {exc.reason}"
        ) from None
    except TimeoutError:
        raise RemoteError(f"run {run_id} did not finish within {options.timeout} s") from None
    url = f"{options.host.rstrip('/')}/#/runs/details/{run_id}"
    return SubmitResult(
        run_id=run_id, experiment_id=str(run.experiment_id), run_url=url, state=state
    )
