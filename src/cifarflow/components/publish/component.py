"""KFP v2 lightweight component wrapping the publish executor."""

from kfp import dsl
from kfp.dsl import Input, Markdown, Model, Output

from cifarflow.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def publish_component(
    model: Input[Model],
    summary: Output[Markdown],
    store: str,
    model_name: str,
    approved: bool = True,
    reason: str = "",
    run_id: str = "",
    data_checksum: str = "",
) -> int:
    """Publishes the winning model to the model store (S3 credentials from S3_* env).

    Args:
        model: select_best's winning Model (SavedModel folder plus extra files).
        summary: one Markdown line saying what happened.
        store: local folder or s3://bucket/prefix.
        model_name: the model's folder name in the store.
        approved: the champion gate's verdict; False keeps the champion.
        reason: the gate's explanation.
        run_id: pipeline run id, e.g. dsl.PIPELINE_JOB_ID_PLACEHOLDER.
        data_checksum: checksum of the training data.

    Returns:
        The new version number, or 0 when the champion was kept.

    Example (inside a pipeline)::

        publish_task = publish_component(
            model=select_task.outputs["best"],
            store="s3://models/cifarflow",
            model_name="cifarflow",
            approved=select_task.outputs["publish"],
            reason=select_task.outputs["decision"],
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
    """
    import os

    from cifarflow.components.publish.executor import publish

    outcome = publish(
        model.path,
        store,
        model_name,
        approved=approved,
        reason=reason,
        run_id=run_id,
        data_checksum=data_checksum,
        artifact_metadata=dict(model.metadata),
    )
    os.makedirs(os.path.dirname(summary.path), exist_ok=True)
    with open(summary.path, "w") as out:
        out.write(outcome.markdown())
    return outcome.version
