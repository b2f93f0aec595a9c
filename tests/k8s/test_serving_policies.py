"""Rules every rendered serving overlay must keep, checked on the rendered objects."""

from __future__ import annotations

import posixpath
import re

import pytest

from tests.k8s.manifests import (
    REPO,
    by_kind,
    command_line,
    configmap_data,
    container,
    container_env,
    flag_value,
    folder_id,
    gateway_deployments,
    labels_match,
    model_server_deployments,
    named,
    parse_text_proto,
    pod_containers,
    render,
    serving_folders,
)

FOLDERS = serving_folders()
CREDENTIAL_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW", re.IGNORECASE)
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
NAMESPACE = "cifarflow"

pytestmark = pytest.mark.parametrize("folder", FOLDERS, ids=folder_id)


def workloads(objects):
    """The workloads of a render; none is a failure, so no rule below passes by checking nothing."""
    found = [o for o in objects if o["kind"] in WORKLOAD_KINDS]
    assert found, "the folder renders no workloads"
    return found


def pod_labels(deployment) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def version_label_flag_violations(objects) -> list[str]:
    """TF Serving containers whose models.config assigns version_labels without
    --allow_version_labels_for_unavailable_models=true.

    At start-up nothing is loaded yet, and ServerCore::ReloadConfig checks the
    labels (UpdateModelVersionLabelMap) before it loads any model
    (server_core.cc:514 and :524 at 2.20.0): without the flag every label is
    "not currently available" and the server exits (main.cc:342-345).
    """
    violations = []
    for deployment in model_server_deployments(objects):
        server = container(deployment["spec"]["template"]["spec"], "tf-serving")
        configs = model_config(objects, deployment)["model_config_list"][0]["config"]
        if not any(config.get("version_labels") for config in configs):
            continue
        flag = [
            a
            for a in server["args"]
            if a.split("=", 1)[0] == "--allow_version_labels_for_unavailable_models"
        ]
        if flag not in (
            ["--allow_version_labels_for_unavailable_models"],
            ["--allow_version_labels_for_unavailable_models=true"],
        ):
            violations.append(
                f"{deployment['metadata']['name']}: version_labels without the flag ({flag or 'absent'})"
            )
    return violations


def model_config(objects, deployment) -> dict:
    """The parsed models.config a TF Serving Deployment is started with."""
    server = container(deployment["spec"]["template"]["spec"], "tf-serving")
    config_path = flag_value(server["args"], "--model_config_file")
    mount = next(
        m for m in server["volumeMounts"] if m["mountPath"] == posixpath.dirname(config_path)
    )
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    data = configmap_data(objects, volume["configMap"]["name"])
    return parse_text_proto(data[posixpath.basename(config_path)])


# --- images -----------------------------------------------------------------


def test_every_image_is_pinned(folder):
    for workload in workloads(render(folder)):
        for c in pod_containers(workload["spec"]["template"]["spec"]):
            image = c["image"]
            name, _, tag = image.rpartition(":")
            assert "@sha256:" in image or (name and "/" not in tag), (
                f"{c['name']}: {image} has no tag"
            )
            assert tag != "latest", f"{c['name']}: {image} floats on :latest"


# --- pod security -------------------------------------------------------------


def test_pods_meet_the_restricted_pod_security_standard(folder):
    for workload in workloads(render(folder)):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = workload["spec"]["template"]["spec"]
        pod_security = pod.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, where
        assert pod_security.get("runAsUser", 1) != 0, where
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(key), f"{where}: {key}"
        assert not any("hostPath" in v for v in pod.get("volumes", [])), where
        for c in pod_containers(pod):
            security = c.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}"
            assert security.get("readOnlyRootFilesystem") is True, f"{where}/{c['name']}"
            assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, (
                f"{where}/{c['name']}"
            )
            assert security.get("runAsUser", 1) != 0, f"{where}/{c['name']}"
            assert not security.get("privileged"), f"{where}/{c['name']}"
            assert security.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{c['name']}"
            assert not security.get("capabilities", {}).get("add"), f"{where}/{c['name']}"


def test_serving_pods_get_no_api_token(folder):
    for workload in workloads(render(folder)):
        assert workload["spec"]["template"]["spec"].get("automountServiceAccountToken") is False


def test_the_namespace_enforces_the_restricted_standard(folder):
    objects = render(folder)
    namespace = named(objects, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, (
                f"{obj['kind']}/{obj['metadata']['name']}"
            )


def test_every_container_has_requests_and_limits(folder):
    for workload in workloads(render(folder)):
        for c in pod_containers(workload["spec"]["template"]["spec"]):
            resources = c.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(part, {}), (
                        f"{workload['metadata']['name']}/{c['name']}: no {part}.{resource}"
                    )


def test_long_running_containers_have_probes_on_declared_ports(folder):
    for workload in workloads(render(folder)):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            ports = {p["name"] for p in c.get("ports", [])} | {
                p["containerPort"] for p in c.get("ports", [])
            }
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in c, f"{workload['metadata']['name']}/{c['name']}: no {probe}"
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                handler = c.get(probe, {})
                port = (handler.get("httpGet") or handler.get("tcpSocket") or {}).get("port")
                if port is not None:
                    assert port in ports, f"{c['name']} {probe} targets undeclared port {port}"


# --- secrets ------------------------------------------------------------------


def test_no_secret_values_anywhere(folder):
    objects = render(folder)
    assert not by_kind(objects, "Secret"), "a Secret in the manifests would put its value in git"
    for cm in by_kind(objects, "ConfigMap"):
        for key in cm.get("data", {}):
            assert not CREDENTIAL_NAME.search(key), (
                f"ConfigMap {cm['metadata']['name']} holds {key}"
            )
    for workload in workloads(objects):
        for c in pod_containers(workload["spec"]["template"]["spec"]):
            for var in c.get("env", []):
                if CREDENTIAL_NAME.search(var["name"]):
                    assert "secretKeyRef" in var.get("valueFrom", {}), (
                        f"{c['name']}: {var['name']} not from a Secret"
                    )
            for arg in c.get("args", []):
                assert not re.search(r"--(s3-)?(access|secret)[-_]key|--token(=|$)", arg), (
                    f"{c['name']}: credential flag {arg}"
                )


def test_every_referenced_secret_is_documented(folder):
    guide = (REPO / "docs" / "kubernetes.md").read_text()
    for workload in workloads(render(folder)):
        for c in pod_containers(workload["spec"]["template"]["spec"]):
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert re.search(
                        rf"create secret generic {ref['name']}\b[^\n]*{ref['key']}=",
                        guide.replace("\\\n", " "),
                    ), (
                        f"docs/kubernetes.md does not show how to create secret {ref['name']} with key {ref['key']}"
                    )


# --- TensorFlow Serving, its ports and its model sync ---------------------------


def test_tf_serving_listens_where_its_service_and_probes_say(folder):
    objects = render(folder)
    for deployment in model_server_deployments(objects):
        server = container(deployment["spec"]["template"]["spec"], "tf-serving")
        assert server["command"] == ["tensorflow_model_server"]
        assert flag_value(server["args"], "--port") == "8500"
        assert flag_value(server["args"], "--rest_api_port") == "8501"
        assert {(p["name"], p["containerPort"]) for p in server["ports"]} == {
            ("grpc", 8500),
            ("http", 8501),
        }
        service = named(objects, "Service", deployment["metadata"]["name"])
        assert labels_match(service["spec"]["selector"], pod_labels(deployment))
        assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
            (8500, "grpc"),
            (8501, "http"),
        }


def test_tf_serving_config_files_are_mounted_and_consistent(folder):
    objects = render(folder)
    for deployment in model_server_deployments(objects):
        template = deployment["spec"]["template"]
        server = container(template["spec"], "tf-serving")
        config_dir = posixpath.dirname(flag_value(server["args"], "--model_config_file"))
        mount = next(m for m in server["volumeMounts"] if m["mountPath"] == config_dir)
        volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
        files = configmap_data(objects, volume["configMap"]["name"])
        for flag in (
            "--model_config_file",
            "--batching_parameters_file",
            "--monitoring_config_file",
        ):
            path = flag_value(server["args"], flag)
            assert posixpath.dirname(path) == config_dir and posixpath.basename(path) in files, flag
        assert flag_value(server["args"], "--enable_batching") == "true"
        batching = parse_text_proto(files["batching.config"])
        assert int(batching["max_batch_size"][0]["value"][0]) > 1
        monitoring = parse_text_proto(files["monitoring.config"])["prometheus_config"][0]
        assert monitoring["enable"] == ["true"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/path"] == monitoring["path"][0]
        assert annotations["prometheus.io/port"] == flag_value(server["args"], "--rest_api_port")


def test_model_config_labels_name_served_versions(folder):
    objects = render(folder)
    for deployment in model_server_deployments(objects):
        (config,) = model_config(objects, deployment)["model_config_list"][0]["config"]
        served = set(config["model_version_policy"][0]["specific"][0]["versions"])
        labels = {label["key"][0]: label["value"][0] for label in config.get("version_labels", [])}
        assert labels and set(labels.values()) <= served, (
            f"labels {labels} name versions not in {served}"
        )
        track = pod_labels(deployment)["cifarflow.io/track"]
        assert track in labels, f"the {track} pods' config has no {track} label"
        # A request that names no version gets the newest loaded one, so a
        # track's pods load exactly the version their label names.
        assert served == {labels[track]}
        server = container(deployment["spec"]["template"]["spec"], "tf-serving")
        # /labels/L/metadata resolves the label and needs that version loaded
        # (get_model_metadata_impl.cc -> ServerCore::GetServableHandle); the
        # status endpoint /labels/L ignores the label (get_model_status_impl.cc).
        assert (
            server["readinessProbe"]["httpGet"]["path"]
            == f"/v1/models/{config['name'][0]}/labels/{track}/metadata"
        )


def test_version_labels_come_with_the_flag_that_lets_tf_serving_start(folder):
    assert version_label_flag_violations(render(folder)) == []


def test_tf_serving_keeps_serving_while_its_pod_leaves_the_endpoints(folder):
    """TF Serving has no SIGTERM handler: a preStop sleep, shorter than the grace period."""
    for deployment in model_server_deployments(render(folder)):
        pod = deployment["spec"]["template"]["spec"]
        hook = container(pod, "tf-serving")["lifecycle"]["preStop"]["exec"]["command"]
        assert hook[0] == "sleep" and len(hook) == 2, hook
        assert 0 < int(hook[1]) < pod["terminationGracePeriodSeconds"] - 10, (
            "time left to stop after the sleep"
        )


# The largest version the grids can publish: the reference grid's ResNet50 at
# 75x75 with size_inner 1000 has 25,656,732 parameters (keras.applications,
# include_top=False, plus the 2048x1000 and 1000x20 Dense head), held as
# float32 three times per version (SavedModel variables, model.keras with
# Adam slots for the head, model.tflite): ~320 MiB. Sync holds the newest two,
# the stable and canary versions, one in staging and one in its trash at once.
LARGEST_VERSION_MIB = 320
VERSIONS_ON_DISK = 6


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i)", quantity).groups()
    return float(number) * units[unit]


def test_models_volume_holds_what_sync_keeps_of_the_largest_grid_model(folder):
    for deployment in model_server_deployments(render(folder)):
        (volume,) = [
            v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "models"
        ]
        limit = _mebibytes(volume["emptyDir"]["sizeLimit"])
        # 1.5x: what the estimate leaves out (graph size, assets, another label).
        assert limit >= 1.5 * LARGEST_VERSION_MIB * VERSIONS_ON_DISK, (
            f"{volume['emptyDir']['sizeLimit']} is too small"
        )


def test_the_model_store_is_named_by_the_user_not_assumed(folder):
    """KFP >= 2.16 has no `minio-service`; the serving stack names no Kubeflow store by default."""
    for cm in by_kind(render(folder), "ConfigMap"):
        if cm["metadata"]["name"].startswith("model-store"):
            endpoint = cm["data"]["S3_ENDPOINT"]
            assert "minio-service" not in endpoint
            host = endpoint.rpartition(":")[0]
            # The placeholder is under the reserved .invalid domain (RFC 6761),
            # so it can never reach a store by accident.
            assert host.endswith(".invalid"), (
                f"{folder_id(folder)} names a store of its own: {endpoint}"
            )


def test_sync_containers_feed_the_path_tf_serving_reads(folder):
    """`cifarflow serve sync` writes <to>/<model>/<version>; TF Serving's base_path is that <to>/<model>."""
    objects = render(folder)
    fake_secrets = {"cifarflow-model-store": {"accesskey": "a", "secretkey": "s"}}
    for deployment in model_server_deployments(objects):
        pod = deployment["spec"]["template"]["spec"]
        init_names = [c["name"] for c in pod["initContainers"]]
        assert init_names == ["model-sync-once", "model-sync"], (
            "one-shot sync must finish before the sidecar starts"
        )
        once, sidecar = pod["initContainers"]
        assert "restartPolicy" not in once, "the first sync must complete before TF Serving starts"
        assert sidecar.get("restartPolicy") == "Always", "the watching sync is a native sidecar"
        (config,) = model_config(objects, deployment)["model_config_list"][0]["config"]
        server = container(pod, "tf-serving")
        for sync, extra in ((once, []), (sidecar, ["--watch"])):
            env = container_env(objects, sync, fake_secrets)
            for var in (
                "S3_ENDPOINT",
                "S3_ACCESS_KEY",
                "S3_SECRET_KEY",
                "S3_SECURE",
                "MODEL_STORE",
                "MODEL_NAME",
            ):
                assert env.get(var), f"{sync['name']}: {var} not set"
            argv = command_line(objects, sync, fake_secrets)
            assert argv == [
                "cifarflow",
                "serve",
                "sync",
                "--from",
                env["MODEL_STORE"],
                "--to",
                flag_value(argv, "--to"),
                "--model-name",
                env["MODEL_NAME"],
                *extra,
            ]
            assert env["MODEL_STORE"].startswith("s3://") and env["MODEL_STORE"].count("/") >= 3, (
                "s3://bucket/prefix"
            )
            to = flag_value(argv, "--to")
            (sync_mount,) = [m for m in sync["volumeMounts"] if m["mountPath"] == to]
            assert not sync_mount.get("readOnly")
            (server_mount,) = [m for m in server["volumeMounts"] if m["name"] == sync_mount["name"]]
            assert server_mount.get("readOnly") is True, "TF Serving only reads the models"
            assert config["base_path"] == [f"{server_mount['mountPath']}/{env['MODEL_NAME']}"]
            assert config["name"] == [env["MODEL_NAME"]]
            assert config["model_platform"] == ["tensorflow"]


# --- the gateway ----------------------------------------------------------------


def test_gateway_listens_where_its_service_says_and_calls_tf_serving_grpc(folder):
    objects = render(folder)
    gateway_service = named(objects, "Service", "gateway")
    for deployment in gateway_deployments(objects):
        gateway = container(deployment["spec"]["template"]["spec"], "gateway")
        args = gateway["args"]
        assert args[:2] == ["serve", "gateway"] and gateway["command"] == ["cifarflow"]
        ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
        assert ports == {
            "http": int(flag_value(args, "--port")),
            "grpc": int(flag_value(args, "--grpc-port")),
        }
        assert labels_match(gateway_service["spec"]["selector"], pod_labels(deployment)), (
            "every gateway pod serves clients"
        )
        # dns:///<service>.<namespace>.svc.cluster.local:<port>: every ready pod
        # of a headless Service, calls spread round robin by the gateway.
        target = re.fullmatch(
            r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)",
            flag_value(args, "--backend"),
        )
        assert target, f"{flag_value(args, '--backend')}: not a dns:/// name of a Service"
        name, namespace, port = target.groups()
        backend = named(objects, "Service", name)
        assert backend["metadata"]["namespace"] == namespace
        assert backend["spec"].get("clusterIP") == "None", (
            "headless: DNS answers with every pod, not one virtual IP"
        )
        assert (int(port), "grpc") in {
            (p["port"], p["targetPort"]) for p in backend["spec"]["ports"]
        }
        track = pod_labels(deployment)["cifarflow.io/track"]
        assert backend["spec"]["selector"]["cifarflow.io/track"] == track, (
            "a gateway calls the model servers of its own track"
        )
        servers = [
            d
            for d in model_server_deployments(objects)
            if labels_match(backend["spec"]["selector"], pod_labels(d))
        ]
        assert len(servers) == 1, "the name resolves to one track's model servers"
    assert {p["targetPort"] for p in gateway_service["spec"]["ports"]} == {"http", "grpc"}


def test_services_select_pods_that_exist(folder):
    objects = render(folder)
    templates = [pod_labels(d) for d in by_kind(objects, "Deployment")]
    for service in by_kind(objects, "Service"):
        assert any(labels_match(service["spec"]["selector"], labels) for labels in templates), (
            service["metadata"]["name"]
        )


def test_no_pod_belongs_to_two_deployments(folder):
    deployments = by_kind(render(folder), "Deployment")
    for a in deployments:
        for b in deployments:
            if a is not b:
                assert not labels_match(a["spec"]["selector"]["matchLabels"], pod_labels(b)), (
                    f"{a['metadata']['name']} would adopt {b['metadata']['name']}'s pods"
                )


# --- availability -----------------------------------------------------------------


def test_gateway_autoscaler_owns_the_replica_count(folder):
    objects = render(folder)
    (hpa,) = by_kind(objects, "HorizontalPodAutoscaler")
    target = named(objects, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    assert target["metadata"]["name"] == "gateway"
    assert "replicas" not in target["spec"], (
        "a replicas field would fight the autoscaler on every apply"
    )
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"], "scale on something"


def test_disruption_budgets_cover_each_pod_once(folder):
    objects = render(folder)
    budgets = by_kind(objects, "PodDisruptionBudget")
    assert {b["metadata"]["name"] for b in budgets} == {"tf-serving", "gateway"}
    for deployment in by_kind(objects, "Deployment"):
        covering = [
            b
            for b in budgets
            if labels_match(b["spec"]["selector"]["matchLabels"], pod_labels(deployment))
        ]
        assert len(covering) == 1, (
            f"{deployment['metadata']['name']}: {len(covering)} budgets (eviction needs exactly one)"
        )
        assert "maxUnavailable" in covering[0]["spec"], (
            "maxUnavailable keeps a one-replica install drainable"
        )


# --- network ------------------------------------------------------------------------


def _policies_for(objects, labels):
    return [
        p
        for p in by_kind(objects, "NetworkPolicy")
        if labels_match(p["spec"]["podSelector"].get("matchLabels", {}), labels)
    ]


def test_only_the_gateway_reaches_tf_serving_grpc(folder):
    objects = render(folder)
    assert any(
        p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]
        for p in by_kind(objects, "NetworkPolicy")
    ), "a default-deny ingress policy"
    gateways = [pod_labels(d) for d in gateway_deployments(objects)]
    for deployment in model_server_deployments(objects):
        policies = _policies_for(objects, pod_labels(deployment))
        assert policies
        grpc_reachable_from_gateway = set()
        for policy in policies:
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("from"), f"{policy['metadata']['name']}: a rule open to everyone"
                ports = {p["port"] for p in rule.get("ports", [])}
                assert ports, f"{policy['metadata']['name']}: a rule open on every port"
                for peer in rule["from"]:
                    if "namespaceSelector" in peer or "ipBlock" in peer:
                        # Only metrics scraping may come from elsewhere, never Predict.
                        assert ports == {8501}, (
                            f"{policy['metadata']['name']}: {peer} reaches {ports}"
                        )
                        continue
                    selector = peer["podSelector"]["matchLabels"]
                    assert selector == {"app.kubernetes.io/name": "gateway"}, (
                        f"{policy['metadata']['name']}: {peer}"
                    )
                    if 8500 in ports:
                        grpc_reachable_from_gateway |= {
                            i for i, g in enumerate(gateways) if labels_match(selector, g)
                        }
        assert grpc_reachable_from_gateway == set(range(len(gateways))), (
            "every gateway must reach TF Serving"
        )


# --- the command lines against the real CLI ----------------------------------------


def _parse(argv: list[str]):
    """argv as the `cifarflow` console script would parse it; a flag the CLI
    does not know fails here rather than in a crash-looping pod."""
    import contextlib
    import io

    from cifarflow.cli.main import build_parser

    assert argv[0] == "cifarflow"
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return build_parser().parse_args(argv[1:])
    except SystemExit:
        raise AssertionError(
            f"`{' '.join(argv)}` is refused by the CLI: {errors.getvalue()}"
        ) from None


def test_project_command_lines_are_accepted_by_the_cli(folder):
    objects = render(folder)
    fake_secrets = {
        "cifarflow-model-store": {"accesskey": "a", "secretkey": "s"},
        "cifarflow-gateway-token": {"token": "t"},
    }
    for deployment in model_server_deployments(objects):
        pod = deployment["spec"]["template"]["spec"]
        (config,) = model_config(objects, deployment)["model_config_list"][0]["config"]
        for sync in pod["initContainers"]:
            env = container_env(objects, sync, fake_secrets)
            args = _parse(command_line(objects, sync, fake_secrets))
            assert (args.verb, args.part) == ("serve", "sync")
            assert args.source == env["MODEL_STORE"] and args.model_name == [env["MODEL_NAME"]]
            assert args.watch == (sync.get("restartPolicy") == "Always")
    for deployment in gateway_deployments(objects):
        pod = deployment["spec"]["template"]["spec"]
        args = _parse(command_line(objects, container(pod, "gateway"), fake_secrets))
        assert (args.verb, args.part) == ("serve", "gateway")
        assert args.host == "0.0.0.0", "reachable through the Service"
        # The gateway asks TF Serving for the model its models.config serves.
        assert args.model_name == config["name"][0]
        assert args.shutdown_grace < pod["terminationGracePeriodSeconds"], (
            "in-flight requests finish before SIGKILL"
        )
