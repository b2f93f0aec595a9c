"""`cifarflow select`: pick the best trial and gate it against the champion."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    from cifarflow.components.candidate import SELECTION_METRICS
    from cifarflow.components.select_best.mcnemar import EXACT_BELOW
    from cifarflow.defaults import GATE_ALPHA, MODEL_NAME
    from cifarflow.serving.store.cli_flags import add_s3_flags

    parser = subparsers.add_parser(
        "select",
        help=summary,
        description=(
            f"{summary}. Ranks evaluated candidates by a validation metric, copies the winner to "
            "OUT/model, writes OUT/leaderboard.md and OUT/selection.json. With --store, the winner is "
            "published only if McNemar's test on paired predictions on the gate split (held out of "
            "training; the official test set is only reported) says it beats the champion (the "
            "version labelled stable, else the newest complete version in the store). A champion "
            "with other class names is refused. Exit code 0 either way; "
            'selection.json\'s "publish" says what to do.'
        ),
        epilog=(
            "example: cifarflow select --candidates work/trial-0 work/trial-1 --out work/selected "
            "--store ./model-store --model-name cifarflow"
        ),
    )
    parser.add_argument(
        "--candidates",
        nargs="+",
        required=True,
        metavar="DIR",
        help="folders written by 'cifarflow evaluate'",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--metric",
        default="val_accuracy",
        choices=SELECTION_METRICS,
        help="validation metric to rank by",
    )
    parser.add_argument(
        "--store", help="model store: a folder or s3://bucket/prefix (omit: no gate)"
    )
    parser.add_argument("--model-name", default=MODEL_NAME, help="model name in the store")
    parser.add_argument(
        "--alpha",
        type=float,
        default=GATE_ALPHA,
        help="significance level of the McNemar gate",
    )
    parser.add_argument(
        "--exact-below",
        type=int,
        default=EXACT_BELOW,
        help="use the exact binomial test below this many discordant pairs",
    )
    parser.add_argument(
        "--force", action="store_true", help="publish even if the winner does not beat the champion"
    )
    parser.add_argument(
        "--data",
        help="preprocessed dataset the candidates were evaluated on; needed only to re-score a "
        "champion without recorded predictions on its gate split",
    )
    add_s3_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cifarflow.components.select_best.executor import SelectConfig, select_best
    from cifarflow.serving.store.cli_flags import s3_settings

    s3 = s3_settings(args, args.store)
    config = SelectConfig(
        metric=args.metric,
        store=args.store,
        model_name=args.model_name,
        alpha=args.alpha,
        force=args.force,
        exact_below=args.exact_below,
        data_dir=args.data,
        s3=s3,
    )
    result = select_best(args.candidates, args.out, config)
    print(
        f"winner: candidate {result.winner} ({args.candidates[result.winner]}) -> {result.model_dir}"
    )
    print(f"decision: {result.decision}: {result.record['gate']['reason']}")
    return 0
