"""What each overlay promises beyond the base."""

from __future__ import annotations

from tests.k8s.manifests import (
    OVERLAYS,
    by_kind,
    configmap_data,
    container,
    named,
    parse_text_proto,
    render,
)


def _token_ref(objects, name="gateway") -> dict:
    gateway = container(named(objects, "Deployment", name)["spec"]["template"]["spec"], "gateway")
    (var,) = [v for v in gateway["env"] if v["name"] == "CIFARFLOW_GATEWAY_TOKEN"]
    return var["valueFrom"]["secretKeyRef"]


def test_local_runs_one_of_everything():
    objects = render(OVERLAYS / "local")
    assert named(objects, "Deployment", "tf-serving")["spec"]["replicas"] == 1
    assert named(objects, "HorizontalPodAutoscaler", "gateway")["spec"]["minReplicas"] == 1
    assert _token_ref(objects).get("optional") is True, (
        "a laptop cluster works without a gateway token"
    )


def test_production_spreads_replicas_and_requires_the_gateway_token():
    objects = render(OVERLAYS / "production")
    for name in ("tf-serving", "gateway"):
        pod = named(objects, "Deployment", name)["spec"]["template"]["spec"]
        terms = pod["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        assert {t["podAffinityTerm"]["topologyKey"] for t in terms} == {"kubernetes.io/hostname"}
        assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
            "topology.kubernetes.io/zone"
        }
    assert named(objects, "Deployment", "tf-serving")["spec"]["replicas"] >= 3
    assert named(objects, "HorizontalPodAutoscaler", "gateway")["spec"]["minReplicas"] >= 3
    assert _token_ref(objects).get("optional") is False


def test_production_gpu_puts_tf_serving_on_gpu_nodes():
    objects = render(OVERLAYS / "production-gpu")
    deployment = named(objects, "Deployment", "tf-serving")
    pod = deployment["spec"]["template"]["spec"]
    server = container(pod, "tf-serving")
    assert server["image"].startswith("tensorflow/serving:") and server["image"].endswith("-gpu")
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The GPU limit alone places the pods: the device plugin advertises
    # nvidia.com/gpu, while `nvidia.com/gpu.present` comes only from GPU Feature
    # Discovery, so a nodeSelector on it would leave them Pending elsewhere.
    assert "nodeSelector" not in pod
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    # Only the model server moves: the gateway stays on CPU nodes.
    assert "nodeSelector" not in named(objects, "Deployment", "gateway")["spec"]["template"]["spec"]


def test_canary_runs_beside_production_with_its_own_version():
    objects = render(OVERLAYS / "canary")
    names = {d["metadata"]["name"] for d in by_kind(objects, "Deployment")}
    assert names == {"tf-serving", "gateway", "tf-serving-canary", "gateway-canary"}
    assert named(objects, "Deployment", "gateway-canary")["spec"]["replicas"] == 1
    assert named(objects, "Deployment", "tf-serving-canary")["spec"]["replicas"] == 1

    def labels_of(deployment_name: str) -> dict:
        pod = named(objects, "Deployment", deployment_name)["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "config")
        (config,) = parse_text_proto(
            configmap_data(objects, volume["configMap"]["name"])["models.config"]
        )["model_config_list"][0]["config"]
        return {label["key"][0]: label["value"][0] for label in config["version_labels"]}

    assert _token_ref(objects, "gateway-canary").get("optional") is False, (
        "no open side door beside production"
    )
    stable, canary = labels_of("tf-serving")["stable"], labels_of("tf-serving-canary")["canary"]
    assert stable != canary, "a canary serves another version than stable"
    # The canary inherits production's other settings of the base, the
    # stable pods keep production's.
    assert named(objects, "Deployment", "tf-serving")["spec"]["replicas"] >= 3
    assert len(by_kind(objects, "HorizontalPodAutoscaler")) == 1


def test_canary_track_alone_names_only_canary_objects():
    """docs/kubernetes.md removes a canary with `kubectl delete -k k8s/overlays/canary/track`:
    that must never touch a stable object."""
    objects = render(OVERLAYS / "canary" / "track")
    assert objects
    for obj in objects:
        assert "-canary" in obj["metadata"]["name"], f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"]["namespace"] == "cifarflow"
