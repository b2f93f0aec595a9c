"""The gateway's OpenAPI description: it matches the routes, and schemathesis fuzzes the real
gateway process (in front of the real model server) from it.

Checks: no 5xx (the backend is up, so not even 503; a 504 only when the
client's own X-Request-Timeout was too short for any answer), every status, content
type, header and body as described, the token enforced where the description says so (`ignored_auth` resends without it); the gateway process stays
alive, logs no unhandled error, and its memory stays bounded.
"""

from __future__ import annotations

import psutil
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks

from cifarflow.serving.gateway.rest import PUBLIC, openapi_description

# Generated from the models and routes in code, as the gateway serves it.
DESCRIPTION = openapi_description()
MAX_GROWTH_MB = 60


def test_the_description_lists_exactly_the_routes(api):
    routes = set(api.routes)
    described = {
        (method.upper(), path) for path, item in DESCRIPTION["paths"].items() for method in item
    }
    assert described == routes
    public = {
        path
        for path, item in DESCRIPTION["paths"].items()
        for op in item.values()
        if op.get("security") == []
    }
    assert public == PUBLIC & {path for _, path in routes}
    for path, item in DESCRIPTION["paths"].items():
        for method, operation in item.items():
            if operation.get("security") != []:
                assert "401" in operation["responses"], (method, path)


def test_the_gateway_serves_this_description(stack):
    response = requests.get(f"{stack.url}/openapi.json", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    assert response.json() == DESCRIPTION


class MemoryWatch:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline = self.peak = self.rss()
        self.samples = 0

    def rss(self) -> int:
        return self.process.memory_info().rss

    def sample(self) -> None:
        self.peak = max(self.peak, self.rss())
        self.samples += 1


@pytest.fixture(scope="module")
def watch(stack) -> MemoryWatch:
    # Warm up first: the first large bodies and the first backend calls grow any Python process once.
    for size in (1024, 900 * 1024):
        requests.post(
            f"{stack.url}/v1/classify",
            data=b"\0" * size,
            timeout=30,
            headers={**stack.auth, "Content-Type": "image/png"},
        )
    return MemoryWatch(stack.gateway.process.pid)


# schemathesis.pytest.from_fixture() breaks on pytest 9 (it sets Function._nodeid), so the cases come
# from the schema's Hypothesis strategies and the base URL is given per call.
schema = schemathesis.openapi.from_dict(DESCRIPTION)
CASES = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(GenerationMode.NEGATIVE)
# The one 5xx that is the client's doing: a 504 when its own X-Request-Timeout (the fuzz sends
# values down to 5e-324 s) ran out before any backend call could answer. Longer client deadlines
# still fail the check.
SHORTEST_HONEST_DEADLINE_S = 1.0


def _client_deadline(case) -> float | None:
    value = next(
        (v for k, v in (case.headers or {}).items() if k.lower() == "x-request-timeout"), None
    )
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def not_a_server_error_but_the_clients_deadline(ctx, response, case):
    """schemathesis's not_a_server_error, except a 504 for a deadline the client made too short,
    and the documented 501 of /v1/explain: the stack's test model has no `explain` signature."""
    if response.status_code == 501 and case.path == "/v1/explain":
        return None
    deadline = _client_deadline(case)
    if (
        response.status_code == 504
        and deadline is not None
        and deadline < SHORTEST_HONEST_DEADLINE_S
    ):
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    not_a_server_error_but_the_clients_deadline,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.ignored_auth,
]
# Not negative_data_rejection: it counts unknown query parameters (ignored, as HTTP servers do) and our
# replacing its Authorization header as schema violations that must be refused. Negative cases still
# run, and must still be answered without a 5xx and as described.
OPERATIONS_SEEN: set[str] = set()


@settings(
    max_examples=250,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
@given(case=CASES)
def test_fuzz_the_gateway_from_its_description(case, stack, watch):
    assert stack.gateway.process.poll() is None, "the gateway process died"
    response = case.call(base_url=stack.url, headers=stack.auth, timeout=30)
    case.validate_response(response, checks=CHECKS)
    OPERATIONS_SEEN.add(case.operation.label)
    watch.sample()


def test_after_the_fuzz_the_gateway_is_alive_healthy_and_its_memory_bounded(stack, watch):
    assert watch.samples >= 100, "the fuzz did not run"
    assert len(OPERATIONS_SEEN) == sum(len(item) for item in DESCRIPTION["paths"].values()), (
        OPERATIONS_SEEN
    )
    assert stack.gateway.process.poll() is None
    assert requests.get(f"{stack.url}/healthz", timeout=5).status_code == 200
    growth_mb = (max(watch.peak, watch.rss()) - watch.baseline) / 2**20
    assert growth_mb < MAX_GROWTH_MB, (
        f"the gateway grew {growth_mb:.0f} MB over {watch.samples} requests"
    )
    log = stack.gateway.output()
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
