"""`cifarflow runs list|compare`: parameters and metrics of pipeline runs side by side."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "runs",
        help=summary,
        description="List pipeline runs, or compare some side by side (terminal table and an HTML page with training curves).",
        epilog=(
            "examples:\n"
            "  cifarflow runs list\n"
            "  cifarflow runs compare cifarflow-2026-11-25-10-00-00-000000 cifarflow-2026-11-25-11-00-00-000000 --html compare.html\n"
            "  cifarflow runs list --from s3://cifarflow/artifacts/cifarflow   # runs uploaded with 'run --artifacts'"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="one line per run, newest first")
    compare = actions.add_parser("compare", help="runs side by side")
    compare.add_argument(
        "run_ids", nargs="+", metavar="RUN", help="run ids (folder names under runs/)"
    )
    compare.add_argument("--html", help="also write the comparison page here")
    for sub in (listing, compare):
        sub.add_argument(
            "--from",
            dest="source",
            default="runs",
            help="runs folder or s3://bucket/prefix/<pipeline>",
        )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cifarflow.pipelines import runs

    if args.action == "list":
        views = runs.list_runs(args.source)
        if not views:
            print(f"no runs in {args.source}")
            return 0
        for view in views:
            accuracy = view.summary.get("test_accuracy", view.summary.get("best_val_accuracy"))
            shown = f"{accuracy:.4f}" if isinstance(accuracy, float) else "-"
            print(
                f"{view.run_id}  {view.status:<9}  grid={view.parameters.get('grid', '?')!s:<10.10}  "
                f"test_accuracy={shown}  {view.wall_seconds:.0f}s"
            )
        return 0
    views = runs.find_runs(args.source, args.run_ids)
    print(runs.table(views))
    if args.html:
        Path(args.html).write_text(runs.compare_html(views), encoding="utf-8")
        print(f"comparison page written to {args.html}")
    return 0
