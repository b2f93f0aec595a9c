"""Entry point of the `cifarflow` console script.

Each verb lives in `src/cifarflow/cli/<verb>.py` and exposes
`register(subparsers, summary)`, which adds its parser and sets
`func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from cifarflow import __version__, step_logging
from cifarflow.cli.help_format import CliParser
from cifarflow.errors import CifarflowError, storage_error

# (verb, one-line summary), in pipeline order.
VERBS: tuple[tuple[str, str], ...] = (
    ("ingest", "fetch and verify the CIFAR-100 archive (URL, file or s3://)"),
    ("preprocess", "split into train/val/gate/test arrays with schema checks"),
    ("eda", "write the exploratory data analysis report"),
    ("train", "train one trial of a hyper-parameter grid"),
    ("evaluate", "score a trained model on val, the gate split and test"),
    ("select", "pick the best trial and gate it against the champion"),
    ("publish", "publish a model version to the model store"),
    ("run", "run the whole pipeline on this machine (kfp.local)"),
    ("compile", "compile the pipeline to YAML for the Kubeflow UI"),
    ("submit", "submit a pipeline run to a Kubeflow cluster"),
    ("runs", "list and compare pipeline runs"),
    ("serve", "run the model server, the gateway or the store sync"),
    ("models", "list, show, promote and roll back model versions"),
    ("predict", "classify images through the gateway or TF Serving"),
)


def _module_name(verb: str) -> str:
    return f"cifarflow.cli.{verb}"


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="cifarflow",
        description=(
            "CIFAR-100 (20 coarse classes) from raw archive to served model, as a "
            "Kubeflow pipeline. Every pipeline step is also a verb that takes paths."
        ),
        epilog="Run 'cifarflow VERB --help' for the options of one verb.",
    )
    parser.add_argument("--version", action="version", version=f"cifarflow {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much the pipeline steps report on stderr",
    )
    subparsers = parser.add_subparsers(
        dest="verb", metavar="VERB", required=True, parser_class=CliParser
    )
    for verb, summary in VERBS:
        importlib.import_module(_module_name(verb)).register(subparsers, summary)
    return parser


def _output_location(args: argparse.Namespace) -> str | None:
    """Where the verb writes (--out, --store, --to), to name it when an error has no file name."""
    for flag in ("out", "store", "dest", "runs_dir"):
        value = getattr(args, flag, None)
        if value:
            return str(value)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    step_logging.configure(args.log_level)
    try:
        try:
            return int(args.func(args) or 0)
        except OSError as exc:  # a full or read-only disk is the user's to fix, not a bug
            error = storage_error(exc, _output_location(args))
            if error is None:
                raise
            raise error from exc
    except CifarflowError as exc:
        if args.debug:
            raise
        print(f"cifarflow {args.verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"cifarflow {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`cifarflow ... | head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command cut short this way
    except Exception as exc:  # a bug: still one line unless --debug asks for more
        if args.debug:
            raise
        print(
            f"cifarflow {args.verb}: internal error: {type(exc).__name__}: {exc} "
            "(re-run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
