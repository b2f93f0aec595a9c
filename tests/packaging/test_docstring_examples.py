"""Every `>>>` example in the package's docstrings runs and shows what it says.

Examples that only make sense inside a pipeline definition are written as plain
code blocks (`Example::`) instead, so nothing here is a prompt that cannot run.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "cifarflow"
WITH_EXAMPLES = sorted(
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    for path in PACKAGE.rglob("*.py")
    if ">>>" in path.read_text(encoding="utf-8")
)


def test_the_package_has_examples_to_check():
    assert "cifarflow.step_logging" in WITH_EXAMPLES


@pytest.mark.parametrize("module_name", WITH_EXAMPLES)
def test_docstring_examples_are_true(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, verbose=False, report=True)
    assert result.attempted > 0, f"{module_name} has '>>>' outside any docstring doctest finds"
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples failed in {module_name}"
    )
