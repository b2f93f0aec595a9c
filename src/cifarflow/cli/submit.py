"""`cifarflow submit`: run the pipeline on a Kubeflow cluster."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from cifarflow.cli.pipeline_args import (
    add_compile_arguments,
    add_pipeline_arguments,
    check_pipeline_root,
    compile_flags_given,
    compile_options,
    pipeline_arguments,
)


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "submit",
        help=summary,
        description=(
            "Compile the pipeline (or take a compiled package) and create a run on a Kubeflow "
            "Pipelines cluster through kfp.Client: the experiment is created when missing, "
            "then reused. The API token comes from $KFP_TOKEN or --token-file, never a flag value. "
            "Needs a Kubeflow Pipelines backend 2.17.0 or newer."
        ),
        epilog=(
            "examples:\n"
            "  kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80 &\n"
            "  cifarflow submit --host http://localhost:8080 --config gpu --experiment cifarflow --wait \\\n"
            '      --image-repository registry.example.com/you/cifarflow --image-tag "$(git rev-parse --short HEAD)"\n'
            "  cifarflow submit --host https://kubeflow.example.com/pipeline --namespace team-a \\\n"
            "      --token-file /var/run/secrets/kubeflow/pipelines/token --package pipeline.yaml"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080"
    )
    parser.add_argument(
        "--experiment",
        default="cifarflow",
        help="experiment name (created when missing; default cifarflow)",
    )
    parser.add_argument("--run-name", help="run display name (default: pipeline name and time)")
    parser.add_argument("--namespace", help="Kubeflow profile namespace (multi-user clusters)")
    parser.add_argument(
        "--token-file", help="file with a bearer token (default: $KFP_TOKEN when set)"
    )
    parser.add_argument(
        "--service-account",
        default="cifarflow-pipeline",
        help="service account the run's pods use (k8s/kubeflow creates it; '' for the namespace's default)",
    )
    parser.add_argument(
        "--package", help="a compiled pipeline YAML to submit instead of compiling now"
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait for the run to finish and exit non-zero unless it succeeded",
    )
    parser.add_argument("--timeout", type=int, default=6 * 3600, help="seconds to wait with --wait")
    add_pipeline_arguments(parser)
    add_compile_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from cifarflow.errors import BadInputError, RemoteError
    from cifarflow.pipelines.compiler import compile_pipeline
    from cifarflow.pipelines.submit import SubmitOptions, pipeline_root_warning, submit

    if args.package and compile_flags_given(args):
        raise BadInputError(
            f"{', '.join(compile_flags_given(args))} set what is compiled; --package is compiled already (run 'cifarflow compile' with them)"
        )
    # The root is also a run-time setting, so it applies to a given --package too.
    pipeline_root = check_pipeline_root(args.pipeline_root)
    warning = pipeline_root_warning(pipeline_root, args.namespace)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    options = SubmitOptions(
        host=args.host,
        experiment=args.experiment,
        run_name=args.run_name,
        namespace=args.namespace,
        token_file=args.token_file,
        wait=args.wait,
        timeout=args.timeout,
        service_account=args.service_account or None,
        pipeline_root=pipeline_root,
    )
    parameters = pipeline_arguments(args, for_cluster=True)
    with tempfile.TemporaryDirectory() as tmp:
        package = (
            Path(args.package)
            if args.package
            else compile_pipeline(Path(tmp) / "pipeline.yaml", **compile_options(args))
        )
        result = submit(package, parameters, options)
    print(f"run {result.run_id} created in experiment {args.experiment}: {result.run_url}")
    if args.wait:
        print(f"run {result.run_id} finished: {result.state}")
        if result.state != "SUCCEEDED":
            raise RemoteError(f"run {result.run_id} ended {result.state}: {result.run_url}")
    return 0
