"""k8s/components/monitoring: the gateway's SLO alerts and dashboard, checked by real Prometheus tools.

The rules are the PrometheusRule's groups, extracted as the Prometheus
Operator extracts them; `promtool` checks and unit-tests them, and a real
Prometheus (Debian's package, installed by `make test` as root) scrapes a
running gateway, loads them, and runs every dashboard query; a second
gateway, with its monitors reading a real training reference, is pushed
into drift with darkened images until Prometheus sees the drift alert.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from tests.k8s.manifests import K8S, by_kind
from tests.k8s.test_user_settings import edit_kustomization, kustomize, validate
from tests.serving.images import cifar_test_images, encode
from tests.support.processes import GatewayProcess, ModelServerProcess
from tests.support.s3_server import free_port
from tests.support.waiting import wait_until

COMPONENT = K8S / "components" / "monitoring"
PROMTOOL_TESTS = sorted((Path(__file__).parent / "promtool").glob("*.test.yaml"))
SLO_ALERTS = {
    "CifarflowGatewayErrorBudgetBurn",
    "CifarflowGatewayErrorBudgetBurnSlow",
    "CifarflowGatewayLatencyBudgetBurn",
    "CifarflowGatewayLatencyBudgetBurnSlow",
}
MODEL_INPUT_ALERTS = {"CifarflowGatewayInputDrift", "CifarflowGatewayOutOfDistributionAnswers"}
ALERTS = SLO_ALERTS | MODEL_INPUT_ALERTS


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (apt-get install prometheus; make test does as root)")
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[dict]:
    """The production overlay with both monitoring components, as the component's comment says."""
    k8s = tmp_path_factory.mktemp("monitoring") / "k8s"
    shutil.copytree(K8S, k8s)
    edit_kustomization(
        k8s / "overlays" / "production" / "kustomization.yaml",
        components=["../../components/pod-monitor", "../../components/monitoring"],
    )
    text = kustomize(k8s / "overlays" / "production")
    validated = validate(text, tmp_path_factory.mktemp("validate"))
    skipped = set(re.findall(r"Couldn't find schema for kind (\S+) with api version", validated))
    # kubernetes-validate has no schema for the Prometheus Operator's CRDs; nothing else may skip.
    assert skipped == {"PodMonitor", "PrometheusRule"}, validated
    return [o for o in yaml.safe_load_all(text) if o]


@pytest.fixture(scope="module")
def rule_groups(rendered) -> dict:
    (rule,) = by_kind(rendered, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "cifarflow"
    return {"groups": rule["spec"]["groups"]}


@pytest.fixture(scope="module")
def dashboard(rendered) -> dict:
    (config_map,) = [
        o
        for o in by_kind(rendered, "ConfigMap")
        if o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert config_map["metadata"]["name"] == "cifarflow-gateway-dashboard"
    (text,) = config_map["data"].values()
    return json.loads(text)


def _dashboard_queries(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_alerts_are_the_slo_burn_rates_and_the_model_input_alerts_each_with_a_runbook(
    rule_groups,
):
    alerts = [r for g in rule_groups["groups"] for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} == ALERTS
    guide = (K8S.parent / "docs" / "monitoring.md").read_text()
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning"}
        assert alert["alert"] in guide, f"docs/monitoring.md says nothing about {alert['alert']}"
        section = re.search(
            r"See docs/monitoring\.md, '([^']+)'", alert["annotations"]["description"]
        )
        assert section and f"## {section.group(1)}" in guide, alert["annotations"]["description"]


def test_promtool_checks_the_rules_and_passes_their_unit_tests(rule_groups, tmp_path):
    promtool = _tool("promtool")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups, sort_keys=False))
    checked = subprocess.run(
        [promtool, "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert checked.returncode == 0 and "SUCCESS: 14 rules found" in checked.stdout, checked
    for tests in PROMTOOL_TESTS:
        shutil.copy(tests, tmp_path / tests.name)
    assert {t.name for t in PROMTOOL_TESTS} >= {
        "gateway-slo.test.yaml",
        "gateway-model-inputs.test.yaml",
    }
    tested = subprocess.run(
        [promtool, "test", "rules", *(t.name for t in PROMTOOL_TESTS)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


@contextlib.contextmanager
def _prometheus(rule_groups: dict, work: Path, target_port: int):
    """A real Prometheus loading the rules and scraping 127.0.0.1:`target_port` each second."""
    prometheus = _tool("prometheus")
    (work / "rules.yaml").write_text(yaml.safe_dump(rule_groups, sort_keys=False))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        # The Prometheus Operator names a PodMonitor's job <namespace>/<name>
        # and the pod's namespace becomes a label: the same here.
        "scrape_configs": [
            {
                "job_name": "cifarflow/gateway",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{target_port}"], "labels": {"namespace": "cifarflow"}}
                ],
            }
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(work / "prometheus.log", "wb") as log:
        server = subprocess.Popen(
            [
                prometheus,
                "--config.file=prometheus.yml",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url), 60, f"Prometheus at {url}", interval_s=0.2)
        yield url
    finally:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def prometheus_and_gateway(rule_groups, tmp_path_factory):
    """A gateway whose model backend is down (every classification a fast 503), scraped each second."""
    _tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    gateway = GatewayProcess(f"127.0.0.1:{free_port()}", work / "gateway.log")
    try:
        with _prometheus(rule_groups, work, gateway.port) as url:
            yield url, gateway
    finally:
        gateway.kill()


DRIFT_WINDOW = 200


@pytest.fixture(scope="module")
def prometheus_and_monitored_gateway(rule_groups, tmp_path_factory):
    """The test model with a training reference, served; a gateway whose monitors read it, scraped."""
    _tool("prometheus")
    from cifarflow.serving.store import publish_model
    from tests.serving.model_factory import export_test_model
    from tests.serving.monitoring_support import model_with_reference

    work = tmp_path_factory.mktemp("prometheus-drift")
    model = model_with_reference(export_test_model(work / "export"), work / "model")
    publish_model(model, work / "store", "cifarflow", {})
    server = ModelServerProcess(
        str(work / "store"), "cifarflow", work / "model.log", rest_port=-1, timeout_s=300
    )
    gateway = None
    try:
        gateway = GatewayProcess(
            server.grpc_address,
            work / "gateway.log",
            "--model-name",
            "cifarflow",
            "--monitor-store",
            str(work / "store"),
            "--drift-window",
            str(DRIFT_WINDOW),
        )
        with _prometheus(rule_groups, work, gateway.port) as url:
            yield url, gateway
    finally:
        if gateway is not None:
            gateway.kill()
        server.kill()


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def _api(url: str, path: str, **params) -> dict:
    answer = requests.get(f"{url}/api/v1/{path}", params=params, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]


def _classify_with_the_backend_down(gateway: GatewayProcess, png: bytes, times: int = 5) -> None:
    for _ in range(times):
        answer = requests.post(
            f"{gateway.url}/v1/classify", files={"file": ("x.png", png)}, timeout=10
        )
        assert answer.status_code == 503, answer.text


@pytest.fixture(scope="module")
def sample_png() -> bytes:
    images, _ = cifar_test_images()
    return encode(images[0], "PNG")


@pytest.mark.slow
def test_real_prometheus_loads_the_rules_and_the_error_alert_trips_on_a_failing_gateway(
    prometheus_and_gateway, sample_png
):
    url, gateway = prometheus_and_gateway
    groups = _api(url, "rules")["groups"]
    assert {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"} == ALERTS

    def error_alert_active() -> bool:
        _classify_with_the_backend_down(gateway, sample_png)
        alerts = _api(url, "alerts")["alerts"]
        return any(
            a["labels"]["alertname"] == "CifarflowGatewayErrorBudgetBurn"
            and a["state"] in ("pending", "firing")
            for a in alerts
        )

    # Pending: its expression holds on the scraped data; it would fire after `for: 2m`.
    wait_until(error_alert_active, 60, "CifarflowGatewayErrorBudgetBurn pending", interval_s=1)
    evaluated = [r for g in _api(url, "rules")["groups"] for r in g["rules"]]
    assert all(r["health"] == "ok" for r in evaluated), [
        r for r in evaluated if r["health"] != "ok"
    ]
    (sample,) = _api(url, "query", query="cifarflow:gateway_classification_errors:ratio_rate5m")[
        "result"
    ]
    assert sample["metric"] == {"__name__": sample["metric"]["__name__"], "namespace": "cifarflow"}
    assert float(sample["value"][1]) == 1.0  # every classification failed; probes do not count


def _classify_batches(gateway: GatewayProcess, images, batch: int = 50) -> None:
    import grpc

    from cifarflow.serving.gateway.proto import classifier_pb2, classifier_pb2_grpc

    with grpc.insecure_channel(gateway.grpc_address) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        for start in range(0, len(images), batch):
            request = classifier_pb2.ClassifyBatchRequest(
                images=[encode(image, "PNG") for image in images[start : start + batch]]
            )
            assert len(stub.ClassifyBatch(request, timeout=30).results) == len(request.images)


@pytest.mark.slow
def test_real_prometheus_sees_induced_drift_and_the_drift_alert_trips(
    prometheus_and_monitored_gateway,
):
    url, gateway = prometheus_and_monitored_gateway
    images, _ = cifar_test_images()
    _classify_batches(gateway, images[:DRIFT_WINDOW])  # real test images: a full window

    def brightness_psi() -> float:
        result = _api(url, "query", query='cifarflow_gateway_drift_psi{feature="brightness"}')[
            "result"
        ]
        return float(result[0]["value"][1]) if result else float("nan")

    wait_until(lambda: brightness_psi() < 0.25, 30, "the clean window scraped", interval_s=0.5)
    _classify_batches(gateway, (images[: DRIFT_WINDOW // 2] * 0.4).astype("uint8"))  # darkened

    def drift_alert_active() -> bool:
        return any(
            a["labels"]["alertname"] == "CifarflowGatewayInputDrift"
            and a["labels"].get("feature") == "brightness"
            and a["state"] in ("pending", "firing")
            for a in _api(url, "alerts")["alerts"]
        )

    # Pending: its expression holds on the scraped gauge; it would fire after `for: 10m`.
    wait_until(drift_alert_active, 60, "CifarflowGatewayInputDrift pending", interval_s=1)
    assert brightness_psi() > 0.25
    judged = _api(url, "query", query="sum(cifarflow_gateway_ood_answers_total)")["result"]
    assert float(judged[0]["value"][1]) == DRIFT_WINDOW + DRIFT_WINDOW // 2


@pytest.mark.slow
def test_every_dashboard_query_runs_on_metrics_the_gateway_exports(
    prometheus_and_gateway, prometheus_and_monitored_gateway, dashboard, rule_groups, sample_png
):
    url, gateway = prometheus_and_gateway
    _classify_with_the_backend_down(gateway, sample_png)  # labelled series appear once used
    monitored = prometheus_and_monitored_gateway[1]
    _classify_batches(monitored, cifar_test_images()[0][:DRIFT_WINDOW])  # the monitors' series
    exported = set()
    for each in (gateway, monitored):
        exported |= set(
            re.findall(r"^(cifarflow_\w+)", requests.get(f"{each.url}/metrics").text, re.M)
        )
    used = set()
    for expr in [
        *_dashboard_queries(dashboard),
        *(r["expr"] for g in rule_groups["groups"] for r in g["rules"]),
    ]:
        used |= set(re.findall(r"\b(cifarflow_\w+)", expr))
    assert used and used <= exported, f"not exported by the gateway: {sorted(used - exported)}"
    for expr in _dashboard_queries(dashboard):
        # Grafana fills these in; Prometheus must accept the rest as it is.
        query = expr.replace("$__rate_interval", "1m").replace("$namespace", ".*")
        _api(url, "query", query=query)
