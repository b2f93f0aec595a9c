"""What users switch on or change in the manifests, done the documented way on a copy of k8s/.

Each test copies k8s/ to a temporary folder, makes the change docs/kubernetes.md
(or a component's own comment) tells users to make, renders the folders a
user applies, and checks the result reaches every object it must: both
tracks of the canary overlay included.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s.manifests import (
    K8S,
    KUBERNETES_VERSION,
    REPO,
    by_kind,
    container,
    gateway_deployments,
    labels_match,
    model_server_deployments,
    pod_containers,
    render,
    venv_tool,
)
from tests.k8s.test_serving_policies import version_label_flag_violations

GUIDE = (REPO / "docs" / "kubernetes.md").read_text()
SERVING_IMAGE = "tensorflow/serving"


@pytest.fixture
def k8s(tmp_path) -> Path:
    """A copy of k8s/ the test may edit."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    return copy


def user_folders(root: Path) -> list[Path]:
    """Every folder a user applies for serving, the canary track alone included."""
    overlays = sorted(p.parent for p in (root / "overlays").glob("*/kustomization.yaml"))
    return [root / "base", *overlays, root / "overlays" / "canary" / "track"]


def edit_kustomization(path: Path, **fields) -> None:
    document = yaml.safe_load(path.read_text())
    for key, value in fields.items():
        document[key] = [*(document.get(key) or []), *value]
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def deployments(folder: Path) -> list[dict]:
    return by_kind(render(folder), "Deployment")


def validate(text: str, tmp_path: Path) -> str:
    """kubernetes-validate --strict's output; fails the test unless it passes."""
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(text)
    result = subprocess.run(
        [
            venv_tool("kubernetes-validate"),
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            str(rendered),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def kustomize(folder: Path) -> str:
    result = subprocess.run(
        [venv_tool("kubectl"), "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- images -------------------------------------------------------------------------


def test_the_documented_image_override_reaches_every_container_of_every_overlay(k8s):
    """The guide's `kustomize edit set image`, in the folder it names, retargets
    the project image everywhere: an override in overlays/production used to
    miss the canary track, which builds from k8s/base/* itself."""
    (folder, name, target) = re.findall(
        r"cd (k8s/\S+) && kustomize edit set image (\S+)=(\S+)", GUIDE
    )[0]
    new_name, _, new_tag = target.rpartition(":")
    # What `kustomize edit set image` writes (the standalone kustomize is not installed here).
    edit_kustomization(
        k8s.parent / folder / "kustomization.yaml",
        images=[{"name": name, "newName": new_name, "newTag": new_tag}],
    )
    for overlay in user_folders(k8s):
        found = [
            c["image"]
            for d in deployments(overlay)
            for c in pod_containers(d["spec"]["template"]["spec"])
        ]
        project = [image for image in found if not image.startswith(SERVING_IMAGE + ":")]
        assert project and set(project) == {target}, (
            f"{overlay.relative_to(k8s)}: {sorted(set(found))}"
        )


def test_the_pull_secret_component_reaches_every_pod_of_every_overlay(k8s):
    secret = "cifarflow-registry"
    assert re.search(rf"kubectl -n cifarflow create secret docker-registry {secret}\b", GUIDE), (
        "the guide shows how to create it"
    )
    edit_kustomization(
        k8s / "components" / "registry" / "kustomization.yaml", components=["../image-pull-secret"]
    )
    for overlay in user_folders(k8s):
        for deployment in deployments(overlay):
            assert deployment["spec"]["template"]["spec"].get("imagePullSecrets") == [
                {"name": secret}
            ], f"{overlay.relative_to(k8s)}/{deployment['metadata']['name']}"


def test_without_user_settings_no_pull_secret_is_asked_for():
    for deployment in deployments(K8S / "overlays" / "canary"):
        assert "imagePullSecrets" not in deployment["spec"]["template"]["spec"]


def test_the_documented_models_disk_patch_resizes_every_model_server(k8s):
    section = GUIDE.split("#### Disk for the models", 1)[1]
    (block,) = re.findall(r"```yaml\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL)
    patch = yaml.safe_load(block)["patches"]
    edit_kustomization(k8s / "overlays" / "production" / "kustomization.yaml", patches=patch)
    wanted = yaml.safe_load(patch[0]["patch"])[0]["value"]
    for deployment in model_server_deployments(render(k8s / "overlays" / "production")):
        (models,) = [
            v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "models"
        ]
        assert models["emptyDir"]["sizeLimit"] == wanted


# --- TF Serving's start-up rule, checked on a broken copy ---------------------------------


def test_the_label_rule_catches_a_config_with_labels_and_no_flag(k8s):
    deployment = k8s / "base" / "tf-serving" / "deployment.yaml"
    text = deployment.read_text()
    assert "- --allow_version_labels_for_unavailable_models=true\n" in text
    deployment.write_text(
        text.replace("- --allow_version_labels_for_unavailable_models=true\n", "")
    )
    violations = version_label_flag_violations(render(k8s / "overlays" / "canary"))
    assert sorted(v.split(":")[0] for v in violations) == ["tf-serving", "tf-serving-canary"]


# --- Prometheus Operator -----------------------------------------------------------------


def test_pod_monitor_component_scrapes_both_apps_of_both_tracks(k8s, tmp_path):
    edit_kustomization(
        k8s / "overlays" / "production" / "kustomization.yaml",
        components=["../../components/pod-monitor"],
    )
    text = kustomize(k8s / "overlays" / "canary")
    objects = [o for o in yaml.safe_load_all(text) if o]
    monitors = by_kind(objects, "PodMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {"tf-serving", "gateway"}
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["namespace"] == "cifarflow"
        selected = [
            d
            for d in by_kind(objects, "Deployment")
            if labels_match(
                monitor["spec"]["selector"]["matchLabels"],
                d["spec"]["template"]["metadata"]["labels"],
            )
        ]
        assert {
            d["spec"]["template"]["metadata"]["labels"]["cifarflow.io/track"] for d in selected
        } == {"stable", "canary"}
        assert "cifarflow.io/track" in monitor["spec"]["podTargetLabels"]
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        for deployment in selected:
            template = deployment["spec"]["template"]
            app = container(template["spec"], monitor["metadata"]["name"])
            ports = {p["name"]: p["containerPort"] for p in app["ports"]}
            # The same port and path the pods' prometheus.io annotations name.
            assert (
                str(ports[endpoint["port"]])
                == template["metadata"]["annotations"]["prometheus.io/port"]
            )
            assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"]
    # kubernetes-validate has no schema for the operator's CRDs: it validates
    # every other object strictly and only warns about these, knowingly skipped
    # (their fields are checked above, names as in the operator's
    # monitoring.coreos.com_podmonitors.yaml).
    output = validate(text, tmp_path)
    skipped = set(re.findall(r"Couldn't find schema for kind (\S+) with api version (\S+)", output))
    assert skipped == {("PodMonitor", "monitoring.coreos.com/v1")}, output


# --- the model store ------------------------------------------------------------------------


def test_kubeflow_seaweedfs_component_points_both_tracks_at_it(k8s):
    edit_kustomization(
        k8s / "overlays" / "production" / "kustomization.yaml",
        components=["../../components/store-kubeflow-seaweedfs"],
    )
    objects = render(k8s / "overlays" / "canary")
    stores = {
        cm["metadata"]["name"]: cm["data"]
        for cm in by_kind(objects, "ConfigMap")
        if cm["metadata"]["name"].startswith("model-store")
    }
    assert len(stores) == 1
    (data,) = stores.values()
    assert data["S3_ENDPOINT"] == "seaweedfs.kubeflow.svc.cluster.local:9000"
    for deployment in model_server_deployments(objects):
        for sync in deployment["spec"]["template"]["spec"]["initContainers"]:
            assert [s["configMapRef"]["name"] for s in sync["envFrom"]] == list(stores), deployment[
                "metadata"
            ]["name"]


def test_seaweedfs_network_policy_admits_the_store_readers_in_the_kubeflow_namespace(tmp_path):
    """KFP's `seaweedfs` policy (2.15+) admits profile namespaces, istio-system and
    kubeflow; this one adds the cifarflow TF Serving and gateway pods, on the pod's S3 port."""
    folder = K8S / "components" / "store-kubeflow-seaweedfs" / "kubeflow-namespace"
    text = kustomize(folder)
    output = validate(text, tmp_path)
    assert "Couldn't find schema" not in output
    (policy,) = [o for o in yaml.safe_load_all(text) if o]
    assert policy["kind"] == "NetworkPolicy" and policy["metadata"]["namespace"] == "kubeflow"
    # KFP's SeaweedFS pods are labelled app=seaweedfs; its Service maps 9000 to 8333.
    assert policy["spec"]["podSelector"]["matchExpressions"] == [
        {"key": "app", "operator": "In", "values": ["seaweedfs"]}
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8333}]
    canary = render(K8S / "overlays" / "canary")
    admitted = set()
    for peer in rule["from"]:
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "cifarflow"
        }
        admitted |= {
            d["metadata"]["name"]
            for d in [*model_server_deployments(canary), *gateway_deployments(canary)]
            if labels_match(
                peer["podSelector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]
            )
        }
    # Every pod that reads the store: the syncs, and the gateways' monitors.
    assert admitted == {"tf-serving", "tf-serving-canary", "gateway", "gateway-canary"}
