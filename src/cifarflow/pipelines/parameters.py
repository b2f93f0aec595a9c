"""The pipeline's run parameters and their defaults, in one place.

The pipeline function's signature (`cifarflow_pipeline.py`) and the flags of
`cifarflow run` and `cifarflow submit` (`cli/pipeline_args.py`) both read
`DEFAULTS`, and tests/pipelines/test_parameters.py checks the compiled YAML
against the CLI. This module imports nothing heavy, so `--help` stays fast.
"""

from __future__ import annotations

import dataclasses

from cifarflow import defaults


@dataclasses.dataclass(frozen=True)
class PipelineParameters:
    """One run's parameters, as the Kubeflow UI lists them.

    Attributes:
        source: `sample`, an http(s) URL, a path or `s3://bucket/key` of the archive.
        expected_md5: whole-archive md5 for your own archive; empty means the
            published per-file md5s.
        grid: a shipped grid's name or a grid's YAML text.
        val_fraction: share of the official train set held out as val.
        seed: seed of the held-out splits.
        model_name: the model's name in the store.
        store: where publish writes (a cluster run's default; a local run
            defaults to `defaults.LOCAL_STORE`).
        gate_metric: validation metric that picks the best trial (the CLI
            passes the grid's own `selection_metric`).
        alpha: significance level of the McNemar gate.
        force_publish: publish even when the gate keeps the champion.
        gate_fraction: share of the official train set held out for the
            champion gate (never trained on, never used for early stopping).
    """

    source: str = "sample"
    expected_md5: str = ""
    grid: str = "quick"
    val_fraction: float = defaults.VAL_FRACTION
    seed: int = defaults.SPLIT_SEED
    model_name: str = defaults.MODEL_NAME
    store: str = defaults.CLUSTER_STORE
    gate_metric: str = "val_accuracy"
    alpha: float = defaults.GATE_ALPHA
    force_publish: bool = False
    gate_fraction: float = defaults.GATE_FRACTION


DEFAULTS = PipelineParameters()
