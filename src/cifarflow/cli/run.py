"""`cifarflow run`: the whole pipeline on this machine with kfp.local."""

from __future__ import annotations

import argparse
from pathlib import Path

from cifarflow.cli.pipeline_args import add_pipeline_arguments, pipeline_arguments


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "run",
        help=summary,
        description=(
            "Run the whole pipeline DAG on this machine with kfp.local (each step a subprocess "
            "in this environment, no cluster): ingest, preprocess, eda, one train+evaluate per "
            "trial of the grid, select with the champion gate, publish. Progress per task on the "
            "console, the full log in runs/<run-id>/run.log, then the leaderboard and where every "
            "artifact is."
        ),
        epilog=(
            "examples:\n"
            "  cifarflow run                                   # quick grid on the shipped sample\n"
            "  cifarflow run --config cpu --source https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz\n"
            "  cifarflow run --store s3://models/cifarflow --artifacts s3://pipelines/root   # S3_* env vars"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_pipeline_arguments(parser)
    local = parser.add_argument_group("local run")
    local.add_argument("--runs-dir", default="runs", help="where run folders go")
    local.add_argument(
        "--artifacts", help="also upload the run to s3://bucket/prefix in KFP's layout"
    )
    local.add_argument(
        "--no-cache",
        action="store_true",
        help="re-run every task, even unchanged ingest/preprocess/eda",
    )
    local.add_argument(
        "--trial-parallelism",
        type=int,
        default=2,
        help="trials trained at once; with 2, one trains while the other starts up or is evaluated",
    )
    local.add_argument(
        "-v", "--verbose", action="store_true", help="show kfp's full task logs on the console"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cifarflow.errors import BadInputError
    from cifarflow.pipelines.cifarflow_pipeline import build_pipeline
    from cifarflow.pipelines.local_run import LocalRunOptions, run_locally
    from cifarflow.pipelines.report import describe_run

    if args.trial_parallelism < 1:
        raise BadInputError("--trial-parallelism must be >= 1")
    arguments = pipeline_arguments(args, for_cluster=False)
    options = LocalRunOptions(
        runs_dir=Path(args.runs_dir),
        enable_caching=not args.no_cache,
        artifacts=args.artifacts,
        verbose=args.verbose,
    )
    # No retries: a local failure is an error to read, not a preempted node.
    pipeline = build_pipeline(trial_parallelism=args.trial_parallelism, train_retries=0)
    result = run_locally(pipeline, arguments, options)
    print(describe_run(result.run_dir, result.record))
    return 0
