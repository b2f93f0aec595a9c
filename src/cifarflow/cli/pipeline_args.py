"""The pipeline's parameters as CLI flags, shared by `run` and `submit`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cifarflow.defaults import CLUSTER_STORE, LOCAL_STORE
from cifarflow.pipelines.parameters import DEFAULTS


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pipeline parameters")
    group.add_argument(
        "--config",
        default=DEFAULTS.grid,
        help="grid: a shipped name (quick, cpu, gpu, reference) or a YAML file",
    )
    group.add_argument(
        "--source",
        default=DEFAULTS.source,
        help="data: 'sample', a URL, a path or s3://bucket/key",
    )
    group.add_argument(
        "--expected-md5",
        default=DEFAULTS.expected_md5,
        help="whole-archive md5 for your own archive",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=DEFAULTS.val_fraction,
        help="share of train held out as val",
    )
    group.add_argument(
        "--gate-fraction",
        type=float,
        default=DEFAULTS.gate_fraction,
        help="share of train held out for the champion gate",
    )
    group.add_argument(
        "--seed", type=int, default=DEFAULTS.seed, help="seed of the val and gate splits"
    )
    group.add_argument("--model-name", default=DEFAULTS.model_name, help="model name in the store")
    group.add_argument(
        "--store",
        help=f"model store: a folder or s3://bucket/prefix (default {LOCAL_STORE} locally, {CLUSTER_STORE} on a cluster)",
    )
    group.add_argument(
        "--gate-metric",
        help="validation metric that picks the best trial (default: the grid's selection_metric)",
    )
    group.add_argument(
        "--alpha",
        type=float,
        default=DEFAULTS.alpha,
        help="significance of the McNemar gate against the champion",
    )
    group.add_argument(
        "--force-publish", action="store_true", help="publish even if the gate keeps the champion"
    )


# Artifact stores the KFP 2.17 launcher opens (backend/src/v2/objectstore/config.go).
PIPELINE_ROOT_SCHEMES = ("minio://", "s3://", "gs://")


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster settings compiled into the pipeline")
    group.add_argument(
        "--trial-parallelism",
        type=int,
        default=0,
        help="trials trained at once (0: all; default 0)",
    )
    group.add_argument(
        "--gpu-node-selector",
        action="append",
        default=[],
        metavar="LABEL=VALUE",
        help="node label the train pods must match (repeatable), e.g. cloud.google.com/gke-accelerator=nvidia-l4",
    )
    group.add_argument(
        "--image-repository",
        metavar="REPO",
        help="repository of the project images you pushed, e.g. registry.example.com/you/cifarflow "
        "(default ghcr.io/cifarflow/cifarflow); every task runs REPO:TAG, the train task REPO:TAG-gpu",
    )
    group.add_argument(
        "--image-tag",
        metavar="TAG",
        help="tag of the CPU image (default: the package version); tag each build, e.g. the commit id, "
        "because KFP's cache key holds the image name, not its digest",
    )
    group.add_argument(
        "--image-pull-secret",
        action="append",
        default=[],
        metavar="NAME",
        help="Secret in the run's namespace to pull the images with (repeatable)",
    )
    group.add_argument(
        "--pipeline-root",
        metavar="URI",
        help="where the run's artifacts go, e.g. minio://mlpipeline/private-artifacts/<namespace>/cifarflow "
        "(default: the namespace's root, from KFP's kfp-launcher ConfigMap)",
    )


def check_pipeline_root(root: str | None) -> str | None:
    """The root when KFP can store artifacts there, else BadInputError."""
    from cifarflow.errors import BadInputError

    if root is None:
        return None
    if not root.startswith(PIPELINE_ROOT_SCHEMES) or len(root.split("://", 1)[1].strip("/")) == 0:
        raise BadInputError(
            f"--pipeline-root takes minio://, s3:// or gs:// and a bucket, e.g. minio://mlpipeline/artifacts/cifarflow, got {root!r}"
        )
    return root


def compile_options(args: argparse.Namespace) -> dict[str, Any]:
    from cifarflow.errors import BadInputError
    from cifarflow.images import PipelineImages

    if args.trial_parallelism < 0:
        raise BadInputError("--trial-parallelism must be >= 0")
    selector = {}
    for item in args.gpu_node_selector:
        label, sep, value = item.partition("=")
        if not sep or not label:
            raise BadInputError(f"--gpu-node-selector takes LABEL=VALUE, got {item!r}")
        selector[label] = value
    images = PipelineImages.resolve(
        args.image_repository, args.image_tag, tuple(args.image_pull_secret)
    )
    return {
        "trial_parallelism": args.trial_parallelism,
        "gpu_node_selector": selector or None,
        "images": images,
        "pipeline_root": check_pipeline_root(args.pipeline_root),
    }


def compile_flags_given(args: argparse.Namespace) -> list[str]:
    """The compile-time flags set on the command line (they do nothing to an already compiled package)."""
    given = {
        "--trial-parallelism": args.trial_parallelism != 0,
        "--gpu-node-selector": bool(args.gpu_node_selector),
        "--image-repository": args.image_repository is not None,
        "--image-tag": args.image_tag is not None,
        "--image-pull-secret": bool(args.image_pull_secret),
    }
    return [flag for flag, set_ in given.items() if set_]


def grid_parameter(config: str) -> tuple[str, str]:
    """(the `grid` parameter, the grid's selection metric), validating the grid here.

    A shipped grid travels by name; any other YAML file travels as its text,
    so a pod without this checkout can still read it.
    """
    import cifarflow.configs as configs
    from cifarflow.grid import load_grid

    path = configs.resolve(config)
    metric = load_grid(path).selection_metric  # a bad grid fails now, not in a pod
    return (path.stem if path.parent == configs.CONFIG_DIR else path.read_text()), metric


def pipeline_arguments(args: argparse.Namespace, for_cluster: bool) -> dict[str, Any]:
    from cifarflow.errors import BadInputError

    if not 0.0 < args.val_fraction < 1.0:
        raise BadInputError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    if not 0.0 < args.gate_fraction < 1.0 or args.val_fraction + args.gate_fraction >= 1.0:
        raise BadInputError(
            f"--gate-fraction must be between 0 and 1 and leave train images with --val-fraction, got {args.gate_fraction}"
        )
    if not 0.0 < args.alpha < 1.0:
        raise BadInputError(f"--alpha must be between 0 and 1, got {args.alpha}")
    grid, grid_metric = grid_parameter(args.config)
    store = args.store or (CLUSTER_STORE if for_cluster else LOCAL_STORE)
    source = args.source
    if not for_cluster:  # tasks run as subprocesses: make local paths independent of their cwd
        if not store.startswith("s3://"):
            store = str(Path(store).resolve())
        if source != "sample" and "://" not in source and Path(source).exists():
            source = str(Path(source).resolve())
    return {
        "source": source,
        "expected_md5": args.expected_md5,
        "grid": grid,
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "gate_fraction": args.gate_fraction,
        "model_name": args.model_name,
        "store": store,
        "gate_metric": args.gate_metric or grid_metric,
        "alpha": args.alpha,
        "force_publish": args.force_publish,
    }
