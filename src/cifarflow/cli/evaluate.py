"""`cifarflow evaluate`: score a trained model on val, gate and test."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help=summary,
        description=(
            f"{summary}. Runs the SavedModel's predict_pixels signature on the val, gate and test "
            "splits and writes metrics.json, {gate,test}_predictions.npy, {gate,test}_labels.npy "
            "and evaluation.html to --out. "
            "--out becomes a candidate for 'cifarflow select': if it is not --model, the model is copied in."
        ),
        epilog="example: cifarflow evaluate --model work/trial-1 --data work/data --out work/trial-1",
    )
    parser.add_argument("--model", required=True, help="a 'cifarflow train' output folder")
    parser.add_argument("--data", required=True, help="preprocessed dataset folder")
    parser.add_argument("--out", required=True, help="output folder (may equal --model)")
    parser.add_argument("--batch-size", type=int, default=500, help="images per prediction call")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cifarflow.components.evaluate.executor import EvaluateConfig, evaluate
    from cifarflow.errors import BadInputError

    if args.batch_size < 1:
        raise BadInputError("--batch-size must be >= 1")
    result = evaluate(args.model, args.data, args.out, EvaluateConfig(batch_size=args.batch_size))
    m = result.metrics
    gate = f"; gate accuracy {m.value('gate_accuracy'):.4f}" if m.gate else "; no gate split"
    val = f"; val accuracy {m.value('val_accuracy'):.4f}" if m.val else ""
    print(
        f"test: accuracy {m.accuracy:.4f}  top-5 {m.value('top5_accuracy'):.4f}  "
        f"macro F1 {m.value('macro_f1'):.4f}  "
        f"ECE {m.value('ece_uncalibrated'):.4f} -> {m.value('ece'):.4f}{val}{gate} -> {args.out}"
    )
    return 0
