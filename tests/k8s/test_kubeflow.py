"""The Kubeflow namespace side: the pipeline's identity, settings and pipeline root."""

from __future__ import annotations

from tests.k8s.manifests import BASE, KUBEFLOW, by_kind, named, render

STORE_KEYS = ("S3_ENDPOINT", "S3_SECURE", "MODEL_STORE", "MODEL_NAME")


def test_publish_writes_where_serving_syncs_from():
    settings = named(render(KUBEFLOW), "ConfigMap", "cifarflow-pipeline-settings")["data"]
    (serving,) = [cm["data"] for cm in by_kind(render(BASE), "ConfigMap") if cm["metadata"]["name"].startswith("model-store-")]
    assert {k: settings[k] for k in STORE_KEYS} == {k: serving[k] for k in STORE_KEYS}


def test_pipeline_service_account_is_bound_to_a_narrow_role():
    objects = render(KUBEFLOW)
    account = named(objects, "ServiceAccount", "cifarflow-pipeline")
    role = named(objects, "Role", "cifarflow-pipeline")
    binding = named(objects, "RoleBinding", "cifarflow-pipeline")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": account["metadata"]["namespace"]}]
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {rule}"
        assert not {"create", "update", "delete", "deletecollection"} & set(rule["verbs"]) or rule["resources"] == ["workflowtaskresults"], rule
        if {"secrets", "configmaps"} & set(rule["resources"]):
            assert rule.get("resourceNames"), "secrets and configmaps only by name"
            assert rule["verbs"] == ["get"]


def test_pipeline_root_is_set_and_no_credentials_are_shipped():
    objects = render(KUBEFLOW)
    root = named(objects, "ConfigMap", "kfp-launcher")["data"]["defaultPipelineRoot"]
    assert root.startswith(("minio://", "s3://", "gs://"))
    assert not by_kind(objects, "Secret")
    for obj in objects:
        assert obj["metadata"].get("namespace") == "kubeflow"
