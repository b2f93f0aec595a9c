"""KFP v2 component that checks the model store before any training."""

from kfp import dsl

from cifarflow.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def check_store_component(store: str, model_name: str) -> str:
    """Checks that publish will be able to write `model_name` into `store`.

    The pipeline runs it first, so a wrong endpoint, a missing bucket or
    refused credentials fail the run in seconds instead of after the GPU
    trials. S3 settings come from the S3_* environment, as for publish.

    Args:
        store: local folder or s3://bucket/prefix.
        model_name: the model's folder name in the store.

    Returns:
        One line saying what was checked.

    Example::

        check = check_store_component(store="s3://cifarflow/models", model_name="cifarflow")
        ingest_task.after(check)
    """
    from cifarflow import step_logging
    from cifarflow.components.check_store.executor import check_store

    step_logging.configure()
    return check_store(store, model_name).summary
