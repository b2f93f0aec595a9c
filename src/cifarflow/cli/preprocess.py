"""`cifarflow preprocess`: split, check and write the dataset arrays."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    from cifarflow.components.preprocess.executor import PreprocessConfig

    defaults = PreprocessConfig()
    parser = subparsers.add_parser(
        "preprocess",
        help=summary,
        description=(
            "Turn raw data into train/val/gate/test uint8 arrays (memory-mapped .npy) and stats.json. "
            "The official test set is kept (and only reported on); val and gate are seeded, "
            "stratified shares of the official train set, never trained on: val picks the epoch, "
            "the temperature and the best trial, gate is where the champion gate compares. Schema and statistics checks stop the step on anomalies. --raw may also "
            "be an image folder (root/<class_name>/*.jpg|png, any size); its folder names become "
            "the class names."
        ),
        epilog="example:\n  cifarflow preprocess --raw runs/data/raw --out runs/data/splits --val-fraction 0.1 --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--raw",
        required=True,
        help="ingest output, official train/test/meta files, or an image folder",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=defaults.val_fraction,
        help="share of train held out as val",
    )
    parser.add_argument(
        "--gate-fraction",
        type=float,
        default=defaults.gate_fraction,
        help="share of train held out as the champion gate's split (0.1 is 5,000 of 50,000)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=defaults.test_fraction,
        help="share held out as test when the source has none (image folders)",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of the stratified selection"
    )
    parser.add_argument(
        "--max-class-imbalance",
        type=float,
        default=defaults.limits.max_class_imbalance,
        help="fail when largest/smallest class count exceeds this",
    )
    parser.add_argument(
        "--max-cross-split-duplicates",
        type=float,
        default=defaults.limits.max_cross_split_duplicates,
        help="fail when duplicates between two splits exceed this share of the smaller one",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cifarflow.components.preprocess.checks import CheckLimits
    from cifarflow.components.preprocess.executor import PreprocessConfig, preprocess

    config = PreprocessConfig(
        val_fraction=args.val_fraction,
        gate_fraction=args.gate_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        limits=CheckLimits(args.max_class_imbalance, args.max_cross_split_duplicates),
    )
    preprocess(args.raw, args.out, config)
    return 0
