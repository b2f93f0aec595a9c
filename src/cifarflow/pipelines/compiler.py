"""Compiling the pipeline to the IR YAML the Kubeflow UI and kfp.Client take."""

from __future__ import annotations

import os
from pathlib import Path


def compile_pipeline(
    output: str | os.PathLike,
    trial_parallelism: int = 0,
    gpu_node_selector: dict[str, str] | None = None,
) -> Path:
    """Writes the pipeline's IR YAML to `output` and returns its path.

    Args:
        output: file to write.
        trial_parallelism: trials trained at once (0: no limit).
        gpu_node_selector: node labels for the train pods.
    """
    from kfp import compiler

    from cifarflow.pipelines.cifarflow_pipeline import build_pipeline

    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(trial_parallelism=trial_parallelism, gpu_node_selector=gpu_node_selector)
    compiler.Compiler().compile(pipeline, package_path=str(path))
    return path
