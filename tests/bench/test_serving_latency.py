"""bench/serving_latency.py: how its rounds become the recorded medians and the target table."""

from __future__ import annotations

import collections
import itertools

from bench.serving_latency import (
    CLIENTS,
    TARGETS,
    in_turn,
    markdown,
    median_in_turn,
    median_rows,
    median_summary,
    summarise,
    turn_orders,
)

# (path, batching) -> throughput at 1 / 8 / 32 clients in a round of scale 1.0.
_THROUGHPUT = {
    ("direct", True): (200.0, 500.0, 700.0),
    ("gateway-grpc", True): (150.0, 400.0, 560.0),
    ("gateway-rest", True): (160.0, 420.0, 630.0),
    ("direct", False): (190.0, 450.0, 210.0),
}


def _round(number: int, scale: float, errors: int = 0) -> list[dict]:
    """One round's rows, every throughput and latency scaled (a busier or quieter round)."""
    rows = []
    for (path, batching), rates in _THROUGHPUT.items():
        for clients, rate in zip(CLIENTS, rates, strict=True):
            rows.append(
                {
                    "round": number,
                    "path": path,
                    "batching": batching,
                    "clients": clients,
                    "requests": int(rate * 5),
                    "completed": int(rate * 6),
                    "errors": errors,
                    "throughput_rps": rate * scale,
                    "p50_ms": 1000.0 * clients / rate / scale,
                    "p99_ms": 2000.0 * clients / rate / scale,
                    "cpu_ms_per_request": {"model_server": 2.0 * scale, "clients": 0.3},
                }
            )
    return rows


# path -> p50 (ms) at 1 client, every path in turn, in a round of scale 1.0.
_IN_TURN = {"direct": 4.0, "gateway-grpc": 5.0, "gateway-rest": 5.5}


def _turns(number: int, scale: float, paths: dict[str, float] = _IN_TURN) -> list[dict]:
    """One round's paths taken in turn (a busier round: every p50 larger by `scale`)."""
    return [
        {
            "round": number,
            "path": path,
            "requests": 500,
            "errors": 0,
            "p50_ms": p50 * scale,
            "p99_ms": 2 * p50 * scale,
        }
        for path, p50 in paths.items()
    ]


def _summaries(rounds: list[list[dict]], turns: list[list[dict]] | None = None) -> list[dict]:
    turns = turns or [_turns(n + 1, 1.0) for n in range(len(rounds))]
    return [summarise(rows, t) for rows, t in zip(rounds, turns, strict=True)]


def _results(rounds: list[list[dict]], turns: list[list[dict]] | None = None) -> dict:
    turns = turns or [_turns(n + 1, 1.0) for n in range(len(rounds))]
    summaries = _summaries(rounds, turns)
    return {
        "machine": {
            "cpu": "test CPU",
            "cores": 2,
            "memory_gib": 8,
            "python": "3.11",
            "date": "2026-11-30T03:00:00",
            "git_commit": "abc1234",
        },
        "model": "test model",
        "image": "a test image",
        "seconds_per_scenario": 5.0,
        "rounds": len(rounds),
        "load_average_before": ["0.1", "0.2", "0.3"],
        "load_average_after": ["0.4", "0.5", "0.6"],
        "scenarios": [row for rows in rounds for row in rows],
        "in_turn_seconds": 10.0,
        "in_turn": [row for rows in turns for row in rows],
        "round_summaries": summaries,
        "summary": median_summary(summaries),
    }


def test_each_scenario_is_its_median_round_and_errors_add_up():
    # The busy round (scale 0.5) is an outlier in every column; the medians do not move with it.
    rows = median_rows(_round(1, 1.0) + _round(2, 0.5, errors=1) + _round(3, 1.1))
    assert len(rows) == len(_THROUGHPUT) * len(CLIENTS)
    direct32 = next(
        r for r in rows if r["path"] == "direct" and r["batching"] and r["clients"] == 32
    )
    assert direct32["throughput_rps"] == 700.0
    assert direct32["p50_ms"] == round(1000.0 * 32 / 700.0, 3)
    assert direct32["cpu_ms_per_request"] == {"model_server": 2.0, "clients": 0.3}
    assert direct32["errors"] == 1 and direct32["rounds"] == 3
    # Run order is kept: the table reads as the run went.
    assert [r["path"] for r in rows[:3]] == ["direct", "direct", "direct"]


def test_targets_are_medians_of_per_round_ratios():
    # Round 2's gateway alone was slowed (a noisy neighbour during its scenario).
    rounds = [_round(1, 1.0), _round(2, 1.0), _round(3, 1.0)]
    for row in rounds[1]:
        if row["path"] == "gateway-rest" and row["clients"] == 32:
            row["throughput_rps"] = 350.0
    summary = median_summary(_summaries(rounds))
    assert summary["gateway_rest_throughput_share_at_32"] == round(630.0 / 700.0, 3)
    assert summary["gateway_grpc_throughput_share_at_32"] == round(560.0 / 700.0, 3)
    assert summary["batching_speedup_at_32"] == round(700.0 / 210.0, 2)


def test_added_latency_at_1_client_comes_from_the_paths_taken_in_turn():
    # The closed-loop 1-client rows say the REST gateway adds 1.25 ms; taken in turn it adds 1.5,
    # 2 and 1.5 ms over rounds whose load doubled in round 2 (every path twice as slow).
    rounds = [_round(1, 1.0), _round(2, 1.0), _round(3, 1.0)]
    turns = [_turns(1, 1.0), _turns(2, 2.0), _turns(3, 1.0)]
    summary = median_summary(_summaries(rounds, turns))
    assert summary["gateway_rest_added_p50_ms_at_1"] == 1.5
    assert summary["gateway_grpc_added_p50_ms_at_1"] == 1.0
    rest = next(
        r for r in median_in_turn([r for t in turns for r in t]) if r["path"] == "gateway-rest"
    )
    assert rest["added_p50_ms"] == 1.5 and rest["p50_ms"] == 5.5 and rest["requests"] == 1500


def test_the_added_p50_is_a_median_of_differences_within_rounds_not_of_medians():
    # Direct's median p50 is 4.0 and the gateway's 4.5, yet no round saw the gateway add 0.5 ms.
    turns = [
        _turns(1, 1.0, {"direct": 3.0, "gateway-grpc": 4.5}),
        _turns(2, 1.0, {"direct": 4.0, "gateway-grpc": 6.0}),
        _turns(3, 1.0, {"direct": 5.0, "gateway-grpc": 4.4}),
    ]
    rows = {r["path"]: r for r in median_in_turn([r for t in turns for r in t])}
    assert rows["direct"]["p50_ms"] == 4.0 and rows["gateway-grpc"]["p50_ms"] == 4.5
    assert rows["gateway-grpc"]["added_p50_ms"] == 1.5
    assert "added_p50_ms" not in rows["direct"]


def test_every_cycle_has_each_path_once_and_no_path_keeps_its_place_or_neighbour():
    names = ["direct", "gateway-grpc", "gateway-rest", "baseline-grpc", "baseline-rest"]
    orders = list(itertools.islice(turn_orders(names), 6000))
    assert all(sorted(order) == sorted(names) for order in orders)
    assert orders == list(itertools.islice(turn_orders(names), 6000))  # seeded: runs compare
    # Each path comes first, and comes right after each other path, about equally often.
    firsts = collections.Counter(order[0] for order in orders)
    assert set(firsts) == set(names)
    assert max(firsts.values()) / min(firsts.values()) < 1.15
    behind = collections.Counter(pair for order in orders for pair in itertools.pairwise(order))
    assert set(behind) == set(itertools.permutations(names, 2))
    assert max(behind.values()) / min(behind.values()) < 1.3


def test_in_turn_times_each_path_once_a_cycle_after_the_warm_up_and_counts_failures():
    sent: list[str] = []

    def make(name: str, fails: bool = False):
        def call():
            sent.append(name)
            if fails:
                raise RuntimeError("refused")

        return lambda: call

    makes = {"direct": make("direct"), "a": make("a"), "b": make("b", fails=True)}
    rows = in_turn(makes, seconds=0.05, warmup=0.02)
    cycles = len(sent) // 3
    assert cycles > 3 and len(sent) == 3 * cycles
    assert all(sorted(sent[3 * i : 3 * i + 3]) == ["a", "b", "direct"] for i in range(cycles))
    by_path = {row["path"]: row for row in rows}
    assert [row["path"] for row in rows] == ["direct", "a", "b"]
    # Warm-up cycles are sent but not timed; a path that fails counts errors and has no p50.
    assert 0 < by_path["direct"]["requests"] == by_path["a"]["requests"] < cycles
    assert by_path["b"]["requests"] == 0 and by_path["b"]["errors"] == cycles
    assert "p50_ms" in by_path["a"] and "p50_ms" not in by_path["b"]


def test_markdown_shows_medians_and_every_rounds_value():
    rounds = [_round(1, 1.0), _round(2, 0.8), _round(3, 1.2)]
    text = markdown(_results(rounds))
    assert "3 round(s) of every scenario; medians over the rounds" in text
    assert "| gateway-rest | 1500 | 0 | 5.5 | 11.0 | 1.5 |" in text
    assert "| target | goal | this run | rounds | met |" in text
    share = [round(630.0 / 700.0, 3)] * 3
    assert f"| gateway_rest_throughput_share_at_32 | >= 0.96 | {share[0]} | " in text
    assert " / ".join(str(v) for v in share) in text
    for key in TARGETS:
        assert f"| {key} |" in text
    # The scenario table has one row per scenario, not one per round.
    assert text.count("| direct | on | 32 |") == 1


def test_the_target_table_has_as_many_cells_as_headings_with_a_baseline_and_a_previous_run():
    rounds = [_round(1, 1.0), _round(2, 0.8), _round(3, 1.2)]
    for rows in rounds:
        rows += [
            {**row, "path": "baseline-" + row["path"]}
            for row in rows
            if row["path"].startswith("gateway-")
        ]
    paths = {**_IN_TURN, "baseline-gateway-grpc": 4.75, "baseline-gateway-rest": 5.0}
    results = _results(rounds, [_turns(n, 1.0, paths) for n in (1, 2, 3)])
    results["baseline"] = {"ref": "HEAD~1", "commit": "0ld0ne"}
    results["previous"] = {"date": "2026-11-29T22:00:00", "commit": "9r3v10u", "summary": {}}
    lines = markdown(results).splitlines()
    table = [line for line in lines if line.startswith("| ")]
    head = next(line for line in table if line.startswith("| target |"))
    assert head == (
        "| target | goal | this run | rounds | baseline (commit 0ld0ne) | baseline rounds "
        "| previous run (2026-11-29T22:00, commit 9r3v10u) | met |"
    )
    rule = lines[lines.index(head) + 1]
    assert rule.count("|") == head.count("|")
    for line in table[table.index(head) + 1 :]:
        assert line.count("|") == head.count("|"), line
    row = next(line for line in table if line.startswith("| gateway_rest_throughput_share_at_32"))
    # The baseline's rows are copies of the new gateway's: the same share (0.9), every round.
    assert row == (
        "| gateway_rest_throughput_share_at_32 | >= 0.96 | 0.9 | 0.9 / 0.9 / 0.9 | 0.9 "
        "| 0.9 / 0.9 / 0.9 | - | no |"
    )
    added = next(line for line in table if line.startswith("| gateway_rest_added_p50_ms_at_1"))
    assert added == (
        "| gateway_rest_added_p50_ms_at_1 | <= 1.0 ms | 1.5 | 1.5 / 1.5 / 1.5 | 1.0 "
        "| 1.0 / 1.0 / 1.0 | - | no |"
    )


def test_one_round_keeps_the_plain_target_table():
    text = markdown(_results([_round(1, 1.0)]))
    assert "| target | goal | this run | met |" in text
    assert "| rounds |" not in text
