"""bench/model_server_grpc.py: how the rounds of the two servers become the recorded summary."""

from __future__ import annotations

import pytest

from bench.model_server_grpc import summarise


def _row(server: str, clients: int, p50: float, rps: float, cpu: float, done: int, errors=0):
    return {
        "server": server,
        "clients": clients,
        "p50_ms": p50,
        "throughput_rps": rps,
        "server_cpu_ms_per_request": cpu,
        "completed": done,
        "errors": errors,
    }


def test_medians_means_request_weighted_cpu_and_this_over_baseline_ratios():
    rounds = [
        _row("baseline", 1, 2.0, 100.0, 1.0, 100),
        _row("baseline", 1, 4.0, 200.0, 3.0, 300, errors=1),
        _row("baseline", 1, 3.0, 150.0, 2.0, 100),
        _row("this", 1, 5.0, 50.0, 2.0, 100),
        _row("this", 1, 1.0, 70.0, 4.0, 100),
        _row("this", 1, 3.0, 60.0, 6.0, 200),
        _row("baseline", 32, 10.0, 400.0, 1.5, 400),
        _row("this", 32, 20.0, 200.0, 3.0, 200, errors=2),
        # A run that answered nothing has no p50: it counts its errors only.
        {"server": "this", "clients": 32, "completed": 0, "errors": 5},
    ]
    summary = summarise(rounds)
    base, this = summary["baseline_1"], summary["this_1"]
    assert base["p50_ms"] == 3.0 and this["p50_ms"] == 3.0  # medians, not means
    assert base["throughput_rps"] == 150.0 and this["throughput_rps"] == 60.0
    # CPU per request weighted by the requests each round completed.
    assert base["server_cpu_ms_per_request"] == pytest.approx((100 + 900 + 200) / 500, abs=1e-3)
    assert this["server_cpu_ms_per_request"] == pytest.approx((200 + 400 + 1200) / 400, abs=1e-3)
    assert base["errors"] == 1 and summary["this_32"]["errors"] == 7
    assert summary["ratios_1"] == {
        "p50_ms": 1.0,
        "throughput_rps": 0.4,
        "server_cpu_ms_per_request": round(4.5 / 2.4, 3),
    }
    assert summary["ratios_32"] == {
        "p50_ms": 2.0,
        "throughput_rps": 0.5,
        "server_cpu_ms_per_request": 2.0,
    }
