"""Accuracy benchmark: one grid trial on the full CIFAR-100, scored on val, gate and test.

    .venv/bin/python bench/accuracy.py --config cpu [--trial 0] [--work DIR]
    .venv/bin/python bench/accuracy.py --smoke        # the code path in about a minute

Steps (each resumable: re-running the same command continues a killed run):
1. `ingest` and `preprocess` the archive (../shared/data/cifar-100-python.tar.gz
   by default) into `<work>/data` with the pipeline's own steps: stratified
   val and gate splits of the official train set, the official 10,000-image
   test set, the pipeline's schema and duplicate checks;
2. `train` the trial into `<work>/model`;
3. `evaluate` it into `<work>/model` (metrics.json, report);
4. append a record to `bench/results/accuracy.json`:
   `{"config", "trial", "split": "test", "accuracy", "macro_f1", "val_accuracy",
   "gate_accuracy", "train_seconds", "epochs", "device", "backend", "date", ...}`.
   The headline is test; val (what chose the epoch and temperature) and gate
   (what the champion gate compares on) are reported beside it.

`--smoke` runs the same code on the shipped sample with one epoch of the
trial and writes its record to `<work>/accuracy.json`, never to the recorded
results. A trained model from elsewhere (e.g. a GPU machine's model.keras
exported here) can be scored with `--skip-train`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from cifarflow.components.candidate import CandidateMetrics

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "accuracy.json"
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar-100-python.tar.gz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config", default="cpu", help="grid: a shipped name (cpu, gpu, ...) or a YAML file"
    )
    parser.add_argument("--trial", type=int, default=0)
    parser.add_argument(
        "--archive", default=str(DEFAULT_ARCHIVE), help="official-format CIFAR-100 archive"
    )
    parser.add_argument(
        "--work",
        default=None,
        help="work folder (default /tmp/cifarflow-bench/<config>-t<trial>-s<seed>)",
    )
    parser.add_argument(
        "--skip-train", action="store_true", help="score the model already in <work>/model"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the shipped sample, one epoch, a small model; the record goes to <work>/accuracy.json",
    )
    parser.add_argument(
        "--apply-flip-tta",
        action="store_true",
        help="before scoring, wrap the trained model in flip test-time augmentation (what `tta_flip: true` "
        "builds), refit its temperature on val and re-export it; said in the record",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the trial's training seed (weights, augmentation, shuffling); the splits keep the "
        "pipeline's split seed, so seeds differ only in training (default: the grid's)",
    )
    parser.add_argument("--note", default="", help="free text stored with the record")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    import cifarflow.configs as configs
    from bench.machine import machine_info
    from bench.records import append_records
    from cifarflow.components.train.executor import TrainResult, train
    from cifarflow.grid import load_grid
    from cifarflow.step_logging import configure

    configure()  # the train step's epoch lines: an hour with no output looks like a hang

    grid = load_grid(configs.resolve(args.config))
    trial = grid.trial(args.trial)
    if args.smoke:  # every step, as little work as possible: one epoch of a ResNet-8
        trial = dataclasses.replace(
            trial,
            architecture="resnet",
            depth=8,
            width=1,
            epochs=1,
            time_budget_minutes=0,
            mixed_precision="off",
        )
    if args.seed is not None:
        trial = dataclasses.replace(trial, seed=args.seed)
    name = f"{grid.name}-t{args.trial}-s{trial.seed}" + ("-smoke" if args.smoke else "")
    work = Path(args.work or f"/tmp/cifarflow-bench/{name}")
    data_dir = work / "data"
    if not (data_dir / "stats.json").is_file():
        source = "sample" if args.smoke else args.archive
        if source != "sample" and not Path(source).is_file():
            print(f"no archive at {source}; pass --archive", file=sys.stderr)
            return 2
        _preprocess(source, work)
    model_dir = work / "model"
    result = TrainResult.load(model_dir) if args.skip_train else train(data_dir, trial, model_dir)
    if args.apply_flip_tta:
        _apply_flip_tta(model_dir, data_dir)

    from cifarflow.components.evaluate.executor import evaluate

    evaluation = evaluate(model_dir, data_dir, model_dir)
    record = {
        "config": grid.name,
        "trial": args.trial,
        "seed": trial.seed,
        **accuracy_record(evaluation.metrics),
        "train_seconds": round(result.train_seconds, 1),
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "params": result.params,
        "device": result.device,
        "backend": result.backend,
        "dtype_policy": result.dtype_policy,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tta_flip": bool(evaluation.metrics.trial.get("tta_flip")),
        "smoke": args.smoke,
        "note": args.note,
        "machine": machine_info(),
    }
    results = work / "accuracy.json" if args.smoke else RESULTS
    append_records(results, [record], indent=2)
    print(json.dumps(record, indent=2))
    return 0


def _preprocess(source: str, work: Path) -> None:
    """The pipeline's own ingest and preprocess, with their defaults (val and gate 10 % each)."""
    from cifarflow.components.ingest.executor import ingest
    from cifarflow.components.preprocess.executor import preprocess

    print(f"preprocessing {source} -> {work / 'data'}", file=sys.stderr, flush=True)
    ingest(source, work / "raw")
    preprocess(work / "raw", work / "data")


def accuracy_record(metrics: CandidateMetrics) -> dict[str, Any]:
    """The scores of one evaluated model: test (the headline), val and gate beside it."""
    test = metrics.splits["test"]
    record: dict[str, Any] = {
        "split": "test",
        "accuracy": round(test["accuracy"], 4),
        "macro_f1": round(test["macro_f1"], 4),
        "top5_accuracy": round(test["top5_accuracy"], 4),
        "ece": round(test["ece"], 4),
        "ece_uncalibrated": round(test["ece_uncalibrated"], 4),
    }
    for split in ("val", "gate"):
        if split in metrics.splits:
            record[f"{split}_accuracy"] = round(metrics.splits[split]["accuracy"], 4)
            record[f"{split}_macro_f1"] = round(metrics.splits[split]["macro_f1"], 4)
            record[f"{split}_count"] = metrics.splits[split]["count"]
    record["test_count"] = test["count"]
    return record


def _apply_flip_tta(model_dir: Path, data_dir: Path) -> None:
    """Re-exports a finished trial with flip TTA: the same weights, two views averaged.

    Exactly the inference model `build_model` makes with `tta_flip: true`, so a
    trial trained without it can be scored with it without retraining.
    """
    import keras
    import numpy as np

    import cifarflow.components.train.models  # noqa: F401  (registers the custom layers)
    from cifarflow.calibration import fit_temperature
    from cifarflow.components.train.export import TFLITE_FILE, export_saved_model, export_tflite
    from cifarflow.components.train.models.build import with_flip_tta
    from cifarflow.data.splits import load_split

    summary_path = model_dir / "train_summary.json"
    summary = json.loads(summary_path.read_text())
    if summary["trial"].get("tta_flip"):
        return
    model = with_flip_tta(keras.saving.load_model(model_dir / "model.keras", compile=False))
    val = load_split(data_dir, "val")
    logits = np.asarray(model.predict(val.images, batch_size=500, verbose=0), dtype=np.float32)
    labels = np.asarray(val.coarse_labels, dtype=np.int64)
    summary["temperature"] = fit_temperature(logits, labels)
    summary["best_val_accuracy"] = float((logits.argmax(axis=1) == labels).mean())
    summary["trial"]["tta_flip"] = True
    summary["note"] = "flip TTA applied after training by bench/accuracy.py --apply-flip-tta"
    model.save(model_dir / "model.keras")
    export_saved_model(model, model_dir, summary["class_names"], summary["temperature"])
    export_tflite(model_dir, model_dir / TFLITE_FILE)
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
