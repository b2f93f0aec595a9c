"""`cifarflow train`: train one trial of a hyper-parameter grid."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "train",
        help=summary,
        description=(
            f"{summary}. Trains trial N of the grid on a preprocessed dataset and writes the model "
            "(SavedModel with serving_default and predict_pixels, model.keras, model.tflite), "
            "history.json and curves.png to --out. Re-running with the same --out resumes a killed run; "
            "with --checkpoint-store and --run-id each epoch's checkpoint is also copied to the store, "
            "so a run that lost --out (a new pod) resumes from there."
        ),
        epilog="example: cifarflow train --data work/data --config quick --trial 1 --out work/trial-1",
    )
    parser.add_argument(
        "--data", help="preprocessed dataset folder (output of 'cifarflow preprocess')"
    )
    parser.add_argument(
        "--config",
        help="hyper-parameter grid: a shipped name (quick, cpu, gpu, reference) or a YAML file",
    )
    parser.add_argument(
        "--trial", type=int, default=0, help="which trial of the grid (0-based; default 0)"
    )
    parser.add_argument(
        "--out", required=True, help="output folder (resumes if it holds a checkpoint)"
    )
    parser.add_argument("--no-tflite", action="store_true", help="skip the TFLite file")
    parser.add_argument(
        "--export-only",
        action="store_true",
        help="only (re-)export --out's model.keras as SavedModel/TFLite (e.g. after training on JAX)",
    )
    parser.add_argument(
        "--list-trials", action="store_true", help="print the grid's trials and exit"
    )
    parser.add_argument(
        "--checkpoint-store",
        metavar="URI",
        help="also keep each epoch's checkpoint in this store (s3://bucket/prefix or a folder), "
        "under .checkpoints/<run id>/; needs --run-id",
    )
    parser.add_argument(
        "--run-id", metavar="ID", help="pipeline run id that names the durable checkpoint"
    )
    from cifarflow.serving.store.cli_flags import add_s3_flags

    add_s3_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    import cifarflow.configs as configs
    from cifarflow.errors import BadInputError
    from cifarflow.grid import load_grid

    if args.export_only:
        from cifarflow.components.train.export import export_model_folder

        export_model_folder(args.out, tflite=not args.no_tflite)
        print(f"exported {args.out}")
        return 0
    if not args.config:
        raise BadInputError("--config is required (a shipped grid such as quick, or a YAML file)")
    grid = load_grid(configs.resolve(args.config))
    if args.list_trials:
        for index, values in enumerate(grid.trial_dicts()):
            print(index, json.dumps(values, sort_keys=True))
        return 0
    if not args.data:
        raise BadInputError("--data is required (the preprocessed dataset folder)")
    trial = grid.trial(args.trial)
    from cifarflow.components.train.executor import train
    from cifarflow.serving.store.cli_flags import s3_settings

    result = train(
        args.data,
        trial,
        args.out,
        export_tflite=not args.no_tflite,
        checkpoint_store=args.checkpoint_store,
        run_id=args.run_id,
        s3_settings=s3_settings(args, args.checkpoint_store),
    )
    print(
        f"trial {args.trial} of {grid.name}: val accuracy {result.best_val_accuracy:.4f} (epoch {result.best_epoch} "
        f"of {result.epochs_run}), {result.train_seconds / 60:.1f} min of training ({result.train_step}) -> {args.out}"
    )
    return 0
