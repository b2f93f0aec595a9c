"""`cifarflow compile`: the pipeline as IR YAML for the Kubeflow UI."""

from __future__ import annotations

import argparse

from cifarflow.cli.pipeline_args import add_compile_arguments, compile_options


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "compile",
        help=summary,
        description=(
            "Write the pipeline's IR YAML: upload it in the Kubeflow Pipelines UI "
            "(Pipelines > Upload pipeline), or give it to 'cifarflow submit --package'. "
            "Needs a Kubeflow Pipelines backend 2.17.0 or newer. Every task runs the project "
            "image; name the one you pushed with --image-repository/--image-tag."
        ),
        epilog=(
            "examples:\n"
            "  cifarflow compile -o pipeline.yaml\n"
            "  cifarflow compile -o pipeline.yaml --image-repository registry.example.com/you/cifarflow \\\n"
            '      --image-tag "$(git rev-parse --short HEAD)" --image-pull-secret regcred'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-o",
        "--output",
        default="pipeline.yaml",
        help="where to write the YAML",
    )
    add_compile_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cifarflow.pipelines.compiler import compile_pipeline

    path = compile_pipeline(args.output, **compile_options(args))
    print(f"compiled pipeline written to {path}")
    return 0
