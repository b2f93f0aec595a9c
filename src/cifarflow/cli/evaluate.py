"""`cifarflow evaluate`: score a trained model on val and test."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help=summary,
        description=(
            f"{summary}. Runs the SavedModel's predict_pixels signature on the val and test splits and "
            "writes metrics.json, test_predictions.npy, test_labels.npy and evaluation.html to --out. "
            "--out becomes a candidate for 'cifarflow select': if it is not --model, the model is copied in."
        ),
        epilog="example: cifarflow evaluate --model work/trial-1 --data work/data --out work/trial-1",
    )
    parser.add_argument("--model", required=True, help="a 'cifarflow train' output folder")
    parser.add_argument("--data", required=True, help="preprocessed dataset folder")
    parser.add_argument("--out", required=True, help="output folder (may equal --model)")
    parser.add_argument(
        "--batch-size", type=int, default=500, help="images per prediction call (default 500)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cifarflow.components.evaluate.executor import EvaluateConfig, evaluate
    from cifarflow.errors import BadInputError

    if args.batch_size < 1:
        raise BadInputError("--batch-size must be >= 1")
    result = evaluate(args.model, args.data, args.out, EvaluateConfig(batch_size=args.batch_size))
    m = result.metrics
    print(
        f"test: accuracy {m['accuracy']:.4f}  top-5 {m['top5_accuracy']:.4f}  macro F1 {m['macro_f1']:.4f}  "
        f"ECE {m['ece_uncalibrated']:.4f} -> {m['ece']:.4f}"
        + (f"; val accuracy {m['val_accuracy']:.4f}" if "val_accuracy" in m else "")
        + f" -> {args.out}"
    )
    return 0
