"""Checks that an installed cifarflow can run every pipeline step.

    python -m cifarflow.install_check [--pipeline pipeline.yaml] [--json]

An editable install in a checkout can import every folder under src/, so a
package the wheel leaves out goes unnoticed there: setup.cfg's old hand-kept
package list dropped expand_grid and record_status from every image, and
`cifarflow --version` still passed, because the verbs import lazily. This
check looks at the install the way a cluster will:

- it compiles the pipeline (or reads a compiled YAML), loads each step's
  embedded program as KFP's executor does, and imports every name that
  program imports, its function body included;
- every verb of the console script has its module (a missing one would stop
  the console script from starting at all);
- the data files the steps read at run time are there: the shipped grids,
  the sample archive (checksum), the gateway's page and API description.

The images run it at build time (dockerfiles/Dockerfile*), and
tests/packaging runs it on the wheel built from the checkout.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import importlib
import importlib.resources
import importlib.util
import json
import sys
import tempfile
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

FUNCTION_FLAG = "--function_to_execute"  # how a KFP lightweight component names its function


@dataclasses.dataclass(frozen=True)
class ImportedName:
    """One `import module` or `from module import name` of a step's program."""

    module: str
    name: str | None = None  # None: the module itself (or `*`)

    def __str__(self) -> str:
        return self.module if self.name is None else f"{self.module}:{self.name}"


@dataclasses.dataclass(frozen=True)
class StepProgram:
    """The Python program a compiled lightweight component runs, and its entry point."""

    executor: str
    function: str
    source: str


@dataclasses.dataclass
class Report:
    """What was checked, and every problem found (empty: the install is complete)."""

    steps: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # executor -> imports
    verbs: list[str] = dataclasses.field(default_factory=list)
    data: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- reading the compiled pipeline ------------------------------------------------------


def step_programs(pipeline_spec: dict[str, Any]) -> list[StepProgram]:
    """The embedded program of every executor in a compiled PipelineSpec.

    A lightweight component's container runs `sh -ec <script> <program>`
    with `--function_to_execute NAME` in its args; the program is the
    command element that is Python and defines NAME.

    Raises:
        ValueError: an executor is not a Python component, or its program is
            not found (the check would otherwise pass without checking it).
    """
    programs = []
    for executor, spec in sorted(pipeline_spec["deploymentSpec"]["executors"].items()):
        container = spec.get("container", {})
        args = list(container.get("args", []))
        if FUNCTION_FLAG not in args or args.index(FUNCTION_FLAG) + 1 >= len(args):
            raise ValueError(
                f"{executor}: not a KFP lightweight Python component (no {FUNCTION_FLAG})"
            )
        function = args[args.index(FUNCTION_FLAG) + 1]
        for candidate in container.get("command", []):
            if _defines_function(candidate, function):
                programs.append(StepProgram(executor, function, candidate))
                break
        else:
            raise ValueError(f"{executor}: no embedded program defines {function}()")
    return programs


def _defines_function(text: str, function: str) -> bool:
    try:
        tree = ast.parse(text)
    except SyntaxError:  # the shell script and the interpreter name
        return False
    return any(isinstance(node, ast.FunctionDef) and node.name == function for node in tree.body)


def program_imports(source: str) -> list[ImportedName]:
    """Every import in a program, at any depth: the steps import the package inside their bodies."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [ImportedName(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [
                ImportedName(node.module, None if alias.name == "*" else alias.name)
                for alias in node.names
            ]
    return list(dict.fromkeys(names))


def load_pipeline(path: str | Path) -> dict[str, Any]:
    """The PipelineSpec document of a compiled pipeline YAML (the platform spec follows it)."""
    import yaml

    documents = [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]
    (spec,) = [doc for doc in documents if "deploymentSpec" in doc]
    return spec


# --- the checks -----------------------------------------------------------------------------


def resolve(imported: ImportedName) -> None:
    """Imports what one import statement names, as the step will at run time.

    Raises:
        ImportError: the module, or the name in it, is missing.
    """
    module = importlib.import_module(imported.module)
    if imported.name is None or hasattr(module, imported.name):
        return
    try:  # `from package import submodule`
        importlib.import_module(f"{imported.module}.{imported.name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{imported.module}.{imported.name}":
            raise  # the submodule exists but imports something missing
        raise ImportError(
            f"cannot import name {imported.name!r} from {imported.module!r}"
        ) from None


def check_step(program: StepProgram, report: Report) -> None:
    """Loads the step's program like KFP's executor_main and resolves every import in it."""
    module = types.ModuleType(f"ephemeral_{program.function}")
    try:
        exec(compile(program.source, f"<{program.executor}>", "exec"), module.__dict__)  # noqa: S102 - our own compiled step
        if not callable(getattr(module, program.function, None)):
            report.problems.append(
                f"{program.executor}: {program.function} is not defined by its program"
            )
    except Exception as exc:  # the program's own top-level imports failed
        report.problems.append(
            f"{program.executor}: loading the program: {type(exc).__name__}: {exc}"
        )
    imports = program_imports(program.source)
    report.steps[program.executor] = [str(i) for i in imports]
    for imported in imports:
        try:
            resolve(imported)
        except Exception as exc:
            report.problems.append(
                f"{program.executor}: import {imported}: {type(exc).__name__}: {exc}"
            )


def check_pipeline(report: Report, pipeline: str | Path | None = None) -> None:
    """Compiles the pipeline (unless `pipeline` names a compiled YAML) and checks every step."""
    with tempfile.TemporaryDirectory(prefix="cifarflow-install-check-") as scratch:
        if pipeline is None:
            try:
                from cifarflow.pipelines.compiler import compile_pipeline

                pipeline = compile_pipeline(Path(scratch) / "pipeline.yaml")
            except Exception as exc:  # e.g. the pipeline module imports a component the wheel lacks
                report.problems.append(f"compiling the pipeline: {type(exc).__name__}: {exc}")
                return
        try:
            programs = step_programs(load_pipeline(pipeline))
        except (ValueError, KeyError) as exc:
            report.problems.append(f"reading {pipeline}: {type(exc).__name__}: {exc}")
            return
    if not programs:
        report.problems.append("the compiled pipeline has no steps")
    for program in programs:
        check_step(program, report)


def check_verbs(report: Report) -> None:
    """Every verb of the console script has its module: the parser imports them all, so one missing stops every verb."""
    from cifarflow.cli.main import VERBS

    for verb, _summary in VERBS:
        name = f"cifarflow.cli.{verb}"
        try:
            if importlib.util.find_spec(name) is None:
                report.problems.append(f"verb {verb}: module {name} is not installed")
                continue
            importlib.import_module(name)
            report.verbs.append(verb)
        except Exception as exc:
            report.problems.append(f"verb {verb}: import {name}: {type(exc).__name__}: {exc}")


def check_data(report: Report) -> None:
    """The package data the steps and the gateway read at run time (setup.cfg's package_data)."""
    checks: Iterable[tuple[str, Any]] = (
        ("shipped grids", _check_grids),
        ("sample archive", _check_sample),
        ("gateway web page", lambda: _resource("cifarflow.serving.gateway", "static/index.html")),
        ("gateway proto", lambda: _resource("cifarflow.serving.gateway.proto", "classifier.proto")),
    )
    for what, check in checks:
        try:
            check()
            report.data.append(what)
        except Exception as exc:
            report.problems.append(f"{what}: {type(exc).__name__}: {exc}")


def _resource(package: str, name: str) -> bytes:
    data = importlib.resources.files(package).joinpath(name).read_bytes()
    if not data:
        raise ValueError(f"{package}/{name} is empty")
    return data


def _check_grids() -> None:
    import cifarflow.configs as configs
    from cifarflow.grid import load_grid

    names = configs.available()
    if "quick" not in names:  # the default of `cifarflow run`
        raise FileNotFoundError(f"the default grid 'quick' is not installed (found: {names})")
    for name in names:
        load_grid(configs.resolve(name))


def _check_sample() -> None:
    from cifarflow.data.sample import SAMPLE_ARCHIVE, SAMPLE_MD5

    digest = hashlib.md5(SAMPLE_ARCHIVE.read_bytes()).hexdigest()  # noqa: S324 - a checksum, as ingest checks it
    if digest != SAMPLE_MD5:
        raise ValueError(f"{SAMPLE_ARCHIVE} has md5 {digest}, expected {SAMPLE_MD5}")


def run_checks(pipeline: str | Path | None = None) -> Report:
    """All the checks; see the module docstring."""
    report = Report()
    check_verbs(report)
    check_data(report)
    check_pipeline(report, pipeline)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cifarflow.install_check",
        description="Check that this installation of cifarflow can run every pipeline step, verb and data file.",
    )
    parser.add_argument(
        "--pipeline", help="check this compiled pipeline YAML instead of compiling one"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = run_checks(args.pipeline)
    if args.json:
        print(json.dumps({**dataclasses.asdict(report), "ok": report.ok}, indent=2))
    else:
        import cifarflow

        print(f"cifarflow install check: {Path(cifarflow.__file__).parent}")
        for executor, imports in report.steps.items():
            print(f"  {executor}: {len(imports)} imports")
        print(f"  verbs: {len(report.verbs)}; data: {', '.join(report.data)}")
        for problem in report.problems:
            print(f"  PROBLEM {problem}")
        print("OK" if report.ok else f"FAILED: {len(report.problems)} problem(s)")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
