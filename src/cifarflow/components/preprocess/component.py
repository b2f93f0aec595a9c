"""KFP v2 component for the preprocess step (a thin wrapper over `executor.preprocess`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from cifarflow.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def preprocess_component(
    raw: Input[Dataset],
    splits: Output[Dataset],
    val_fraction: float,
    seed: int,
    gate_fraction: float,
) -> None:
    """Splits the raw data into checked train/val/gate/test arrays.

    Args:
        raw: ingest output (or an image folder dataset).
        splits: `{train,val,gate,test}/*.npy` and `stats.json`.
        val_fraction: share of the official train set held out for validation.
        seed: seeds the stratified val and gate selection.
        gate_fraction: share of the official train set held out for the
            champion gate (never trained on, never used for val).

    Example (inside a pipeline)::

        preprocess_task = preprocess_component(raw=ingest_task.outputs["dataset"])
    """
    from cifarflow.components.preprocess.executor import PreprocessConfig, preprocess

    result = preprocess(
        raw.path,
        splits.path,
        PreprocessConfig(val_fraction=val_fraction, gate_fraction=gate_fraction, seed=int(seed)),
    )
    splits.metadata.update({f"{name}_count": count for name, count in result.counts.items()})
    splits.metadata["class_names"] = result.stats["class_names"]
