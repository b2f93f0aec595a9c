"""Defaults that more than one part of cifarflow uses, written once.

The pipeline's parameters (`pipelines/parameters.py`), the CLI's flags, the
steps' configs and the serving clients take these values from here, so a
changed default cannot leave one of them behind. `cifarflow VERB --help`
shows each flag's default from the same value.
"""

from __future__ import annotations

MODEL_NAME = "cifarflow"
"""The model's folder in the store and its name on TF Serving and the gateway."""

GATE_ALPHA = 0.05
"""Significance level of the McNemar gate against the champion."""

VAL_FRACTION = 0.1
"""Share of the official train set held out as val (epoch, temperature and trial choice)."""

GATE_FRACTION = 0.1
"""Share of the official train set held out for the champion gate: 5,000 of 50,000."""

SPLIT_SEED = 0
"""Seed of the held-out splits."""

LOCAL_STORE = "runs/model-store"
"""Model store of a run on this machine (relative to the working directory)."""

CLUSTER_STORE = "s3://cifarflow/models"
"""Model store of a run on a cluster: the bucket users create, as the README shows."""
