"""bench/load.py: the quick mode end to end, and that failed requests are counted, not dropped."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from bench.load import Plan, Target, open_loop, run_searches, search_steps
from tests.support.local_http import LocalHTTPServer

REPO = Path(__file__).resolve().parents[2]


class FlakyServer(LocalHTTPServer):
    """Answers 200, except 500 for every 4th request and a dropped connection for every 10th."""

    path = "/v1/classify"

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                with server._lock:
                    server.count += 1
                    n = server.count
                if n % 10 == 0:
                    self.close_connection = True  # no answer at all
                    return
                status = 500 if n % 4 == 0 else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.send_header("X-Gateway-Worker", "4242")
                self.end_headers()
                self.wfile.write(b"{}")

        return Handler


def test_open_loop_counts_every_failed_request():
    with FlakyServer() as server:
        started = time.monotonic()
        result = open_loop(server.url, [b"jpeg"], rate=200, seconds=0.5, connections=4, timeout_s=2)
        took = time.monotonic() - started
    assert result["sent"] == 100
    assert result["ok"] + result["errors"] == 100
    # 25 answers of 500 minus those that landed on a 10th (dropped) request; 10 dropped.
    assert result["errors_by_kind"]["http_500"] == 20
    assert result["errors"] == 30 and result["ok"] == 70
    assert result["passed"] is False
    assert result["answers_by_worker"] == {"4242": 70}
    assert 0.45 < took < 5  # open loop: it paces the requests over the given seconds


def drive(search, passes) -> tuple[list[tuple[float, str]], float | None]:
    """Runs a search_steps generator against `passes(rate, phase)`; (steps taken, its return)."""
    taken = []
    try:
        rate, _, phase = next(search)
        while True:
            taken.append((round(rate, 2), phase))
            rate, _, phase = search.send({"passed": passes(rate, phase)})
    except StopIteration as finished:
        return taken, finished.value


PLAN = Plan(start_rate=40, step_factor=2, probe_s=1, hold_s=5, holds=3, pause_s=0)


def test_the_search_steps_up_bisects_then_holds_lower_until_a_hold_passes():
    # Probes pass up to 100 req/s; a longer hold only up to 90.
    def passes(rate, phase):
        return rate <= (90 if phase == "hold" else 100)

    taken, lowest_failed = drive(search_steps(PLAN, PLAN.start_rate), passes)
    assert taken == [
        (40, "step-up"),
        (80, "step-up"),
        (160, "step-up"),
        (120, "bisect"),
        (100, "bisect"),
        (110, "bisect"),  # 110 / 100 is within bisect_until: stop
        (100, "hold"),
        (90, "hold"),
    ]
    assert lowest_failed == 110


def test_the_search_halves_when_even_the_first_probe_fails_and_keeps_to_its_budget():
    taken, _ = drive(search_steps(PLAN, PLAN.start_rate), lambda rate, phase: rate <= 12)
    assert [rate for rate, phase in taken if phase == "step-down"] == [20, 10]
    # A budget of 3 probe-seconds: the 4th step is never asked for.
    short = Plan(start_rate=40, step_factor=2, probe_s=1, search_budget_s=3, pause_s=0)
    taken, _ = drive(search_steps(short, short.start_rate), lambda rate, phase: True)
    assert [phase for _, phase in taken] == ["step-up"] * 4 + ["hold"]


def test_side_by_side_searches_take_turns_and_alternate_who_goes_first():
    capacity = {"new": 100.0, "old": 60.0}
    order: list[str] = []

    def probe(target, rate, seconds, phase):
        order.append(target.label)
        ok = rate <= capacity[target.label]
        return {
            "phase": phase,
            "passed": ok,
            "rate_rps": rate,
            "p50_ms": 1.0,
            "p99_ms": 2.0,
            "answered_rps": rate,
            "cores_used": {},
            "answers_by_worker": {},
        }

    found = run_searches([Target("new", "u1"), Target("old", "u2")], PLAN, 40, probe)
    steps = [len(f["steps"]) for f in found]
    both = 2 * min(steps)
    # While both search, each turn has one step of each, the first alternating.
    assert order[:both] == ["new", "old", "old", "new"] * (both // 4) + ["new", "old"] * (
        both % 4 // 2
    )
    assert set(order[both:]) == {found[steps.index(max(steps))]["workers"]}
    assert [f["max_rate_rps"] for f in found] == [100.0, 60.0]
    assert [f["searched_alongside"] for f in found] == [["old"], ["new"]]


def test_quick_mode_end_to_end(tmp_path, exported_model):
    out = tmp_path / "load.json"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "load.py"),
            "--quick",
            "--model",
            str(exported_model),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["quick"] is True
    assert {"cpu", "cores", "memory_gib", "date", "git_commit"} <= set(results["machine"])
    assert len(results["load_average_before"]) == 3 and len(results["load_average_after"]) == 3
    assert [s["workers"] for s in results["searches"]] == ["1", "2"]
    for found in results["searches"]:
        assert found["steps"], found
        for step in found["steps"]:
            assert {
                "phase",
                "rate_rps",
                "sent",
                "ok",
                "errors",
                "errors_by_kind",
                "p50_ms",
                "p99_ms",
                "passed",
                "cores_used",
                "load_average_1m",
            } <= set(step)
            assert step["ok"] + step["errors"] == step["sent"]
            assert step["passed"] == (
                step["errors"] == 0 and step["p99_ms"] is not None and step["p99_ms"] < 100
            )
        if found["max_rate_rps"]:
            assert found["p99_ms"] < 100
    # With 2 workers every answer names the worker (its pid) that gave it.
    for step in results["searches"][1]["steps"]:
        assert sum(step["answers_by_worker"].values()) == step["ok"]
        assert len(step["answers_by_worker"]) <= 2 and all(
            pid.isdigit() for pid in step["answers_by_worker"]
        )
    soak = results["soak"]
    assert soak["rate_basis"].startswith("half the 1-worker")
    assert soak["samples"] and {"rss_mb", "fds", "client_connections", "t_s"} <= set(
        soak["samples"][0]
    )
    assert (
        soak["fds_net_of_clients_first_third_max"] < soak["fds_first_third_max"]
    )  # the clients hold some
    assert soak["rss_mb_first_third_max"] > 0 and soak["fds_first_third_max"] > 0
    assert isinstance(soak["flat"], bool) and soak["ok"] + soak["errors"] == soak["sent"]
    assert out.with_suffix(".md").read_text().startswith("# Gateway load and soak (quick")
