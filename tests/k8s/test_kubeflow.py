"""The Kubeflow namespace side: the pipeline's identity, and nothing site-specific.

The store's endpoint and keys are the user's (a ConfigMap and a Secret made
by hand, as docs/kubernetes.md shows), and the namespace's pipeline root is
left alone: a run takes its own with `--pipeline-root`.
"""

from __future__ import annotations

import re
import shlex

import yaml

from tests.k8s.manifests import KUBEFLOW, REPO, by_kind, named, render


def _settings_keys_the_pipeline_maps(tmp_path) -> set[str]:
    from cifarflow.pipelines.cifarflow_pipeline import SETTINGS_CONFIG_MAP
    from cifarflow.pipelines.compiler import compile_pipeline

    documents = list(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    keys = set()
    for executor in documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        for source in executor.get("configMapAsEnv", []):
            assert source["configMapName"] == SETTINGS_CONFIG_MAP
            keys |= {k["configMapKey"] for k in source["keyToEnv"]}
    return keys


def test_no_store_endpoint_and_no_pipeline_root_are_shipped():
    objects = render(KUBEFLOW)
    assert not [o for o in by_kind(objects, "ConfigMap")], (
        "site settings are the user's, made by hand"
    )
    assert not by_kind(objects, "Secret")
    text = "\n".join(path.read_text() for path in KUBEFLOW.glob("*.yaml"))
    assert "minio-service" not in text  # gone from Kubeflow Pipelines' manifests since 2.16.0
    assert "defaultPipelineRoot" not in text
    for obj in objects:
        assert obj["metadata"].get("namespace") == "kubeflow"


def test_docs_create_the_settings_the_pipeline_reads(tmp_path):
    """The `kubectl create configmap` of both guides sets every key the compiled pipeline maps, and only those."""
    mapped = _settings_keys_the_pipeline_maps(tmp_path)
    assert mapped == {"S3_ENDPOINT", "S3_SECURE"}
    for guide in ("README.md", "docs/kubernetes.md"):
        text = (REPO / guide).read_text().replace("\\\n", " ")
        commands = [
            c
            for c in re.findall(
                r"kubectl[^\n`]*create configmap cifarflow-pipeline-settings[^\n`]*", text
            )
        ]
        assert commands, f"{guide} does not create the ConfigMap cifarflow-pipeline-settings"
        for command in commands:
            literals = {
                a.split("=", 2)[1] for a in shlex.split(command) if a.startswith("--from-literal=")
            }
            assert literals == mapped, f"{guide}: {command}"
        assert "mc mb" in text, f"{guide} never creates the bucket"


def test_pipeline_service_account_is_bound_to_a_narrow_role():
    objects = render(KUBEFLOW)
    account = named(objects, "ServiceAccount", "cifarflow-pipeline")
    role = named(objects, "Role", "cifarflow-pipeline")
    binding = named(objects, "RoleBinding", "cifarflow-pipeline")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {rule}"
        assert not {"create", "update", "delete", "deletecollection"} & set(rule["verbs"]) or rule[
            "resources"
        ] == ["workflowtaskresults"], rule
        if {"secrets", "configmaps"} & set(rule["resources"]):
            assert rule.get("resourceNames"), "secrets and configmaps only by name"
            assert rule["verbs"] == ["get"]
