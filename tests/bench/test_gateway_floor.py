"""bench/gateway_floor.py: how the rounds become the recorded medians and derived costs."""

from __future__ import annotations

import pytest

from bench.gateway_floor import SCENARIOS, markdown, summarise


def _round(scale: float) -> dict[str, dict]:
    base = {
        "grpc_echo_sync": (0.6, 0.8),
        "grpc_echo_aio": (0.7, 0.9),
        "uvicorn_bare": (0.3, 0.15),
        "gateway_healthz": (0.5, 0.35),
        "gateway_classify": (6.0, 2.8),
        "gateway_classify_monitors_off": (5.5, 2.5),
        "direct": (2.0, 2.1),
    }
    return {
        name: {"requests": 100, "p50_ms": p50 * scale, "cpu_ms_per_request": cpu * scale}
        for name, (p50, cpu) in base.items()
    }


def test_medians_over_rounds_and_the_derived_costs():
    # The middle round is the median whatever the order; an outlier round does not move it.
    summary = summarise([_round(1.0), _round(10.0), _round(0.9)])
    assert set(SCENARIOS) <= set(summary)
    assert summary["gateway_classify"] == {"p50_ms": 6.0, "cpu_ms_per_request": 2.8}
    derived = summary["derived"]
    assert derived["classify_handler_cpu_ms"] == pytest.approx(2.8 - 0.35)
    assert derived["monitors_cpu_ms"] == pytest.approx(2.8 - 2.5)
    assert derived["framework_cpu_ms"] == pytest.approx(0.35 - 0.15)
    assert derived["added_p50_ms"] == pytest.approx(6.0 - 2.0)


def test_markdown_names_every_scenario_and_the_target():
    rounds = [_round(1.0)]
    record = {
        "machine": {
            "cpu": "test CPU",
            "cores": 2,
            "python": "3.11",
            "date": "2026-11-30",
            "git_commit": "abc1234",
        },
        "rounds": 1,
        "seconds_per_scenario": 3.0,
        "load_average_before": ["0.1", "0.2", "0.3"],
        "load_average_after": ["0.4", "0.5", "0.6"],
        "summary": summarise(rounds),
    }
    text = markdown(record)
    for name in SCENARIOS:
        assert f"| {name} |" in text
    assert "gateway's added p50: 4.0 ms (target <= 1.0 ms)" in text
    assert "test CPU, 2 cores" in text and "commit abc1234" in text


def test_a_baseline_gateway_gets_its_own_rows_and_handler_cost():
    rounds = []
    for scale in (1.0, 1.1):
        row = _round(scale)
        row["baseline_healthz"] = {"requests": 100, "p50_ms": 0.4, "cpu_ms_per_request": 0.25}
        row["baseline_classify"] = {"requests": 100, "p50_ms": 5.0, "cpu_ms_per_request": 2.0}
        rounds.append(row)
    summary = summarise(rounds)
    derived = summary["derived"]
    assert derived["baseline_classify_handler_cpu_ms"] == pytest.approx(2.0 - 0.25)
    assert derived["baseline_added_p50_ms"] == pytest.approx(5.0 - (2.0 + 2.2) / 2)
    record = {
        "machine": {"cpu": "c", "cores": 2, "python": "3", "date": "d", "git_commit": "x"},
        "rounds": 2,
        "seconds_per_scenario": 1.0,
        "load_average_before": ["0", "0", "0"],
        "load_average_after": ["0", "0", "0"],
        "baseline": {"ref": "8c3c84f", "commit": "8c3c84f"},
        "summary": summary,
    }
    text = markdown(record)
    assert "| baseline_classify | 5.0 | 2.0 |" in text
    assert "Baseline gateway (commit 8c3c84f): classify handler's own CPU 1.75 ms" in text
