"""The local run's console shows each step's own progress lines, the store check's included."""

from __future__ import annotations

import io

from cifarflow.pipelines.console import FilteredConsole


def test_the_store_check_line_reaches_the_console():
    console, log = io.StringIO(), io.StringIO()
    FilteredConsole(console, log).write(
        'store: /x/runs/model-store: folder present and writable\nstore: True\n{"executor_output": 1}\n'
    )
    assert (
        console.getvalue() == "store: /x/runs/model-store: folder present and writable\n"
    )  # not kfp's "Output: True" echo
    assert log.getvalue().count("\n") == 3
