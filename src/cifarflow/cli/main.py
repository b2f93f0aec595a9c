"""Entry point of the `cifarflow` console script.

Each verb lives in `src/cifarflow/cli/<verb>.py` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
Verbs whose module does not exist yet are still listed in `--help`; running
one prints that it is not built and exits with code 64.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from typing import Sequence

from cifarflow import __version__
from cifarflow.errors import CifarflowError, NotBuiltError, storage_error

# (verb, one-line summary, issue that builds it), in pipeline order.
VERBS: tuple[tuple[str, str, int], ...] = (
    ("ingest", "fetch and verify the CIFAR-100 archive (URL, file or s3://)", 3),
    ("preprocess", "split into train/val/test arrays with schema checks", 3),
    ("eda", "write the exploratory data analysis report", 3),
    ("train", "train one trial of a hyper-parameter grid", 4),
    ("evaluate", "score a trained model on val and test", 4),
    ("select", "pick the best trial and gate it against the champion", 4),
    ("publish", "publish a model version to the model store", 6),
    ("run", "run the whole pipeline on this machine (kfp.local)", 5),
    ("compile", "compile the pipeline to YAML for the Kubeflow UI", 5),
    ("submit", "submit a pipeline run to a Kubeflow cluster", 5),
    ("runs", "list and compare pipeline runs", 5),
    ("serve", "run the model server, the gateway or the store sync", 6),
    ("models", "list, show, promote and roll back model versions", 6),
    ("predict", "classify images through the gateway or TF Serving", 6),
)


def _module_name(verb: str) -> str:
    return f"cifarflow.cli.{verb}"


def _register_not_built(subparsers: argparse._SubParsersAction, verb: str, summary: str, issue: int) -> None:
    parser = subparsers.add_parser(
        verb,
        help=f"{summary} [not built yet]",
        description=f"{summary}. Not built yet (issue #{issue}).",
    )
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def not_built(args: argparse.Namespace) -> int:
        raise NotBuiltError(f"'cifarflow {verb}' is not built yet (issue #{issue})")

    parser.set_defaults(func=not_built)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifarflow",
        description=(
            "CIFAR-100 (20 coarse classes) from raw archive to served model, as a "
            "Kubeflow pipeline. Every pipeline step is also a verb that takes paths."
        ),
        epilog="Run 'cifarflow VERB --help' for the options of one verb.",
    )
    parser.add_argument("--version", action="version", version=f"cifarflow {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, summary, issue in VERBS:
        if importlib.util.find_spec(_module_name(verb)) is None:
            _register_not_built(subparsers, verb, summary, issue)
        else:
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
