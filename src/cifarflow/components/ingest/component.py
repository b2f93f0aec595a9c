"""KFP v2 component for the ingest step (a thin wrapper over `executor.ingest`)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from cifarflow.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def ingest_component(source: str, dataset: Output[Dataset], expected_md5: str = "") -> str:
    """Fetches, verifies and extracts the CIFAR-100 archive.

    Args:
        source: `sample`, an http(s) URL, a local path or `s3://bucket/key`.
        dataset: the extracted `cifar-100-python/` folder and `ingest.json`.
        expected_md5: whole-archive md5 for your own archive; empty means the
            published per-file md5s.

    Returns:
        The archive's md5: the data checksum publish records with the model.

    Example::

        ingest_task = ingest_component(source="sample")
    """
    from cifarflow import step_logging
    from cifarflow.components.ingest.executor import ingest

    step_logging.configure()
    result = ingest(source, dataset.path, expected_md5=expected_md5 or None)
    dataset.metadata.update(
        {
            "source": source,
            "archive_md5": result.archive_md5 or "",
            "verified_by": result.verified_by,
        }
    )
    return result.archive_md5 or ""
