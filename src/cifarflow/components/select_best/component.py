"""KFP v2 component for the select step (a thin wrapper over `executor.select_best`)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from cifarflow.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def select_best_component(
    candidates: Input[list[Model]],
    best: Output[Model],
    leaderboard: Output[Markdown],
    summary: Output[Metrics],
    selection: Output[Artifact],
    metric: str = "val_accuracy",
    store: str = "",
    model_name: str = "cifarflow",
    alpha: float = 0.05,
    force: bool = False,
) -> NamedTuple("SelectOutputs", [("publish", bool), ("decision", str)]):
    """Picks the best trial and gates it against the store's champion.

    Args:
        candidates: evaluate_component `candidate` outputs (`dsl.Collected`).
        best: the winner, copied verbatim (SavedModel, metrics.json,
            test_predictions.npy, ...): the folder publish copies.
        leaderboard: every trial, best first.
        summary: one run-summary Metrics (the KFP UI compares runs by it).
        selection: selection.json: ranking and the gate's decision with its statistics.
        metric: validation metric to rank by.
        store: model store (folder or s3://bucket/prefix); empty: no gate.
        model_name: the model's name in the store.
        alpha: significance level of the McNemar gate.
        force: publish even if the winner does not beat the champion.

    Returns:
        publish: whether to publish `best`; decision: "publish" or "keep_champion".

    Example:
        >>> select_task = select_best_component(
        ...     candidates=dsl.Collected(eval_task.outputs["candidate"]), store="s3://models/prod")
        >>> with dsl.If(select_task.outputs["publish"] == True):
        ...     publish_component(model=select_task.outputs["best"], ...)
    """
    import shutil
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from cifarflow.components.metric_artifacts import write_metadata_file
    from cifarflow.components.select_best.executor import (
        LEADERBOARD_FILE,
        SELECTION_FILE,
        SelectConfig,
        select_best,
    )

    with tempfile.TemporaryDirectory() as tmp:
        config = SelectConfig(
            metric=metric, store=store or None, model_name=model_name, alpha=alpha, force=force
        )
        result = select_best([c.path for c in candidates], tmp, config)
        shutil.copytree(result.model_dir, best.path, dirs_exist_ok=True)
        shutil.copyfile(Path(tmp) / LEADERBOARD_FILE, leaderboard.path)
        shutil.copyfile(Path(tmp) / SELECTION_FILE, selection.path)
    winner = candidates[result.winner]
    m = result.record
    gate = m["gate"]
    best.metadata.update(
        {"candidate": result.winner, "trial": m["winner"]["trial"], "publish": result.publish}
    )
    for name in ("val_accuracy", "val_macro_f1", "accuracy", "top5_accuracy", "macro_f1", "ece"):
        value = winner.metadata.get(name)
        if value is None:
            import json

            value = json.loads((Path(best.path) / "metrics.json").read_text()).get(name)
        if isinstance(value, (int, float)):
            summary.log_metric(f"best_{name}", float(value))
    summary.log_metric("trials", float(len(candidates)))
    summary.log_metric("publish", 1.0 if result.publish else 0.0)
    if "mcnemar" in gate:
        summary.log_metric("gate_p_value", float(gate["mcnemar"]["p_value"]))
    write_metadata_file(summary)
    outputs = namedtuple("SelectOutputs", ["publish", "decision"])
    return outputs(result.publish, result.decision)
