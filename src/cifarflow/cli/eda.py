"""`cifarflow eda`: write the exploratory data analysis report."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "eda",
        help=summary,
        description=(
            "Write report.html (self-contained: sample images per class, class distribution per "
            "split, pixel statistics, duplicates, data checks), summary.md and metrics.json."
        ),
        epilog="example:\n  cifarflow eda --data runs/data/splits --out runs/data/eda",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="preprocess output folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--samples-per-class",
        type=int,
        default=10,
        help="sample images shown per class",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed that picks the samples")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cifarflow.components.eda.executor import EdaConfig, eda
    from cifarflow.errors import BadInputError

    if args.samples_per_class < 1:
        raise BadInputError("--samples-per-class must be at least 1")
    eda(args.data, args.out, EdaConfig(samples_per_class=args.samples_per_class, seed=args.seed))
    return 0
