"""cifarflow.install_check: the smoke check the images run at build time finds what a wheel left out.

tests/packaging/test_wheel_install.py runs it on the real built wheel; here
it meets compiled pipelines whose steps import what is not installed.
"""

from __future__ import annotations

import json

import yaml

from cifarflow.install_check import (
    ImportedName,
    load_pipeline,
    main,
    program_imports,
    step_programs,
)
from cifarflow.pipelines.compiler import compile_pipeline

PROGRAM = """
import kfp
from kfp import dsl
from kfp.dsl import *
from typing import *

def {function}(grid: str) -> str:
    from {module} import {name}

    return str({name})
"""


def compiled(tmp_path, **steps: tuple[str, str]) -> str:
    """A compiled-pipeline YAML whose executor `exec-<step>` imports (module, name) in its body."""
    executors = {}
    for step, (module, name) in steps.items():
        function = f"{step}_component"
        executors[f"exec-{step}"] = {
            "container": {
                "image": "example/image:1",
                "command": [
                    "sh",
                    "-ec",
                    "printf '%s' \"$0\" > prog.py\npython3 -m kfp.dsl.executor_main",
                    PROGRAM.format(function=function, module=module, name=name),
                ],
                "args": ["--executor_input", "{{$}}", "--function_to_execute", function],
            }
        }
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        yaml.safe_dump_all([{"deploymentSpec": {"executors": executors}}, {"platforms": {}}])
    )
    return str(path)


def report_of(capsys, *argv: str) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_the_real_pipeline_names_every_step_and_its_package_imports(tmp_path):
    programs = {
        p.executor: p for p in step_programs(load_pipeline(compile_pipeline(tmp_path / "p.yaml")))
    }
    assert {
        "exec-expand-grid-component",
        "exec-record-status-component",
        "exec-train-component",
    } <= set(programs)
    grid = program_imports(programs["exec-expand-grid-component"].source)
    assert ImportedName("cifarflow.components.expand_grid.executor", "expand_grid") in grid
    assert ImportedName("kfp.dsl") in grid  # `from kfp.dsl import *`, the program's own header
    assert programs["exec-train-component"].function == "train_component"


def test_a_complete_step_passes(tmp_path, capsys):
    code, report = report_of(
        capsys,
        "--pipeline",
        compiled(tmp_path, grid=("cifarflow.components.expand_grid.executor", "expand_grid")),
    )
    assert (code, report["problems"]) == (0, [])
    assert "cifarflow.components.expand_grid.executor:expand_grid" in report["steps"]["exec-grid"]
    assert "compile" in report["verbs"] and "shipped grids" in report["data"]


def test_a_step_whose_package_is_missing_fails_the_check(tmp_path, capsys):
    """What the old hand-kept package list did to expand_grid: the step imports a package the install lacks."""
    code, report = report_of(
        capsys,
        "--pipeline",
        compiled(
            tmp_path,
            grid=("cifarflow.components.expand_grid.executor", "expand_grid"),
            gone=("cifarflow.components.no_such_step.executor", "run"),
            renamed=("cifarflow.components.expand_grid.executor", "no_such_function"),
        ),
    )
    assert code == 1
    problems = "\n".join(report["problems"])
    assert (
        "exec-gone: import cifarflow.components.no_such_step.executor:run: ModuleNotFoundError"
        in problems
    )
    assert (
        "exec-renamed: import cifarflow.components.expand_grid.executor:no_such_function: ImportError: cannot import name"
        in problems
    )
    assert "exec-grid" not in problems


def test_a_step_that_is_not_a_python_component_is_reported_not_skipped(tmp_path, capsys):
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "deploymentSpec": {
                    "executors": {
                        "exec-shell": {"container": {"image": "busybox", "command": ["true"]}}
                    }
                }
            }
        )
    )
    code, report = report_of(capsys, "--pipeline", str(path))
    assert code == 1 and "not a KFP lightweight Python component" in report["problems"][0]


def test_the_human_report_ends_with_the_verdict(tmp_path, capsys):
    assert main(["--pipeline", compiled(tmp_path, gone=("cifarflow.no_such_module", "x"))]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "FAILED: 1 problem(s)" and any(
        line.startswith("  PROBLEM exec-gone:") for line in out
    )
