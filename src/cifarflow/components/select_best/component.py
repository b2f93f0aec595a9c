"""KFP v2 component for the select step (a thin wrapper over `executor.select_best`)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from cifarflow.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def select_best_component(
    candidates: Input[list[Model]],
    best: Output[Model],
    leaderboard: Output[Markdown],
    summary: Output[Metrics],
    selection: Output[Artifact],
    model_name: str,
    alpha: float,
    data: Input[Dataset] = None,
    metric: str = "val_accuracy",
    store: str = "",
    force: bool = False,
) -> NamedTuple("SelectOutputs", [("publish", bool), ("decision", str)]):  # type: ignore[valid-type]
    """Picks the best trial and gates it against the store's champion on the gate split.

    Args:
        candidates: evaluate_component `candidate` outputs (`dsl.Collected`).
        best: the winner, copied verbatim (SavedModel, metrics.json, gate and
            test predictions, ...): the folder publish copies.
        leaderboard: every trial, best first.
        summary: one run-summary Metrics (the KFP UI compares runs by it).
        selection: selection.json: ranking and the gate's decision with its statistics.
        data: the preprocessed dataset the candidates were evaluated on: the
            champion is re-scored on its gate split when its recorded
            predictions are missing or from another gate split.
        metric: validation metric to rank by.
        store: model store (folder or s3://bucket/prefix); empty: no gate.
        model_name: the model's name in the store.
        alpha: significance level of the McNemar gate.
        force: publish even if the winner does not beat the champion.

    Returns:
        publish: whether to publish `best`; decision: "publish" or "keep_champion".

    Example (inside a pipeline)::

        select_task = select_best_component(
            candidates=dsl.Collected(eval_task.outputs["candidate"]),
            data=preprocess_task.outputs["splits"],
            store="s3://models/prod",
        )
        with dsl.If(select_task.outputs["publish"] == True):
            publish_component(model=select_task.outputs["best"], ...)
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
        best_metadata,
        select_best,
        summary_metrics,
    )

    config = SelectConfig(
        metric=metric,
        store=store or None,
        model_name=model_name,
        alpha=alpha,
        force=force,
        data_dir=data.path if data is not None else None,
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = select_best([c.path for c in candidates], tmp, config)
        shutil.copytree(result.model_dir, best.path, dirs_exist_ok=True)
        shutil.copyfile(Path(tmp) / LEADERBOARD_FILE, leaderboard.path)
        shutil.copyfile(Path(tmp) / SELECTION_FILE, selection.path)
    best.metadata.update(best_metadata(result))
    for name, value in summary_metrics(result).items():
        summary.log_metric(name, value)
    write_metadata_file(summary)
    SelectOutputs = namedtuple("SelectOutputs", ["publish", "decision"])
    return SelectOutputs(result.publish, result.decision)
