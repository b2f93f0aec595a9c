"""Compiling the pipeline to the IR YAML the Kubeflow UI and kfp.Client take."""

from __future__ import annotations

import os
from pathlib import Path

from cifarflow.images import PipelineImages


def compile_pipeline(
    output: str | os.PathLike,
    trial_parallelism: int = 0,
    gpu_node_selector: dict[str, str] | None = None,
    images: PipelineImages | None = None,
    pipeline_root: str | None = None,
) -> Path:
    """Writes the pipeline's IR YAML to `output` and returns its path.

    Args:
        output: file to write.
        trial_parallelism: trials trained at once (0: no limit).
        gpu_node_selector: node labels for the train pods.
        images: the images every task runs and their pull Secrets
            (default: `cifarflow.images`).
        pipeline_root: the run's artifact root, compiled in as the pipeline's
            default (KFP's `defaultPipelineRoot`); None keeps the namespace's.
    """
    from kfp import compiler

    from cifarflow.pipelines.cifarflow_pipeline import build_pipeline

    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(
        trial_parallelism=trial_parallelism,
        gpu_node_selector=gpu_node_selector,
        images=images,
        pipeline_root=pipeline_root,
    )
    compiler.Compiler().compile(pipeline, package_path=str(path))
    return path
