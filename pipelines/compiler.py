"""Compiling the pipeline to the IR YAML the Kubeflow UI and kfp.Client take."""

from __future__ import annotations

import os
from pathlib import Path


def compile_pipeline(output: str | os.PathLike, trial_parallelism: int = 0) -> Path:
    """Writes the pipeline's IR YAML to `output` and returns its path.

    Args:
        output: file to write.
        trial_parallelism: trials trained at once (0: no limit).
    """
    from kfp import compiler

    from cifarflow.pipelines.cifarflow_pipeline import build_pipeline

    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(trial_parallelism=trial_parallelism), package_path=str(path))
    return path
