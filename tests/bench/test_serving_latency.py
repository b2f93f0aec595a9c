"""bench/serving_latency.py: how its rounds become the recorded medians and the target table."""

from __future__ import annotations

from bench.serving_latency import (
    CLIENTS,
    TARGETS,
    markdown,
    median_rows,
    median_summary,
    summarise,
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


def _results(rounds: list[list[dict]]) -> dict:
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
        "round_summaries": [summarise(rows) for rows in rounds],
        "summary": median_summary([summarise(rows) for rows in rounds]),
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
    summary = median_summary([summarise(rows) for rows in rounds])
    assert summary["gateway_rest_throughput_share_at_32"] == round(630.0 / 700.0, 3)
    assert summary["gateway_grpc_throughput_share_at_32"] == round(560.0 / 700.0, 3)
    assert summary["batching_speedup_at_32"] == round(700.0 / 210.0, 2)
    added = 1000.0 / 160.0 - 1000.0 / 200.0
    assert abs(summary["gateway_rest_added_p50_ms_at_1"] - added) < 1e-3


def test_markdown_shows_medians_and_every_rounds_value():
    rounds = [_round(1, 1.0), _round(2, 0.8), _round(3, 1.2)]
    text = markdown(_results(rounds))
    assert "3 round(s) of every scenario; medians over the rounds" in text
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
    results = _results(rounds)
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


def test_one_round_keeps_the_plain_target_table():
    text = markdown(_results([_round(1, 1.0)]))
    assert "| target | goal | this run | met |" in text
    assert "| rounds |" not in text
