"""`cifarflow serve model|gateway|sync`: the serving processes."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cifarflow.serving.gateway.config import GatewayConfig
    from cifarflow.serving.model_server.config import ModelServerConfig


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    from cifarflow.serving.model_server.tf_serving_flags import add_tf_serving_flags
    from cifarflow.serving.store.cli_flags import add_s3_flags

    parser = subparsers.add_parser("serve", help=summary, description=summary + ".")
    # The same flag as `cifarflow --log-level`, still taken here after the verb.
    parser.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the servers' logging level (like cifarflow --log-level; default: INFO)",
    )
    parts = parser.add_subparsers(dest="part", metavar="PART", required=True)

    # The model server's flags default to ModelServerConfig's own values (a light import).
    from cifarflow.serving.model_server.config import ModelServerConfig

    ms = _field_defaults(ModelServerConfig)
    model = parts.add_parser(
        "model",
        help="TensorFlow-Serving-compatible model server (gRPC + REST)",
        description="Serve the newest complete version (or a labelled one) of a model from a store, "
        "speaking TensorFlow Serving's gRPC and REST APIs, and pick up new versions as they appear. "
        "TensorFlow Serving's own flags and config files are taken too (see docs/serving.md).",
    )
    # Required unless TF Serving's --model_config_file names the model (checked when run).
    model.add_argument("--store", help="local folder or s3://bucket/prefix (synced to --cache-dir)")
    model.add_argument("--model-name")
    model.add_argument(
        "--grpc-port",
        type=int,
        default=ms.grpc_port,
        help="gRPC port (0: a free port, printed at start)",
    )
    model.add_argument(
        "--rest-port",
        type=int,
        default=ms.rest_port,
        help="REST port (0: a free port; -1: no REST)",
    )
    model.add_argument("--host", default=ms.host, help="address to bind")
    model.add_argument(
        "--label", help="serve the version this label names (stable, canary) instead of the newest"
    )
    model.add_argument(
        "--poll-interval",
        type=float,
        default=ms.poll_interval_s,
        help="seconds between store checks for new versions",
    )
    model.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=ms.batching,
        help="server-side batching",
    )
    model.add_argument("--max-batch-size", type=int, default=ms.max_batch_size)
    # Defaults chosen by measurement (docs/serving.md, "Why the model server's
    # defaults"): one batch per core (TF Serving's advice for CPUs) and no added
    # wait: requests that arrive while batches run form the next.
    model.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=ms.batch_timeout_s * 1000.0,
        help="longest a request waits for others under load",
    )
    model.add_argument(
        "--num-batch-threads",
        type=int,
        default=ms.num_batch_threads,
        help="batches that may run at once",
    )
    # TF Serving's --tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism.
    model.add_argument(
        "--intra-op-threads",
        type=int,
        default=ms.intra_op_threads,
        help="TensorFlow threads per op (0: one per core; 1 measured best on 2 cores)",
    )
    model.add_argument(
        "--inter-op-threads",
        type=int,
        default=ms.inter_op_threads,
        help="TensorFlow ops run at once (0: one per core)",
    )
    model.add_argument(
        "--max-message-mb",
        type=float,
        default=ms.max_message_bytes / 2**20,
        help="largest request, gRPC or REST",
    )
    model.add_argument(
        "--cache-dir",
        type=Path,
        help="where an s3:// store is synced (default: a temporary folder)",
    )
    add_s3_flags(model)
    add_tf_serving_flags(model)
    model.set_defaults(func=serve_model)

    # The gateway's flags default to GatewayConfig's own values (a light import).
    from cifarflow.serving.gateway.config import GatewayConfig

    gw = _field_defaults(GatewayConfig)
    gateway = parts.add_parser(
        "gateway",
        help="REST + gRPC + web page in front of a model server",
        description="Classify images for clients (REST /v1/classify and /predict, the Classifier gRPC "
        "service, a web page at /) by calling a model server over gRPC. Bearer-token auth is on when "
        "CIFARFLOW_GATEWAY_TOKEN or --token-file gives a token.",
    )
    gateway.add_argument(
        "--backend",
        required=True,
        help="model server gRPC target: HOST:PORT (one connection), or dns:///NAME:PORT or "
        "ipv4:ADDR:PORT,ADDR:PORT (every address, calls spread round robin; in Kubernetes a "
        "headless Service's name)",
    )
    gateway.add_argument(
        "--port", type=int, default=gw.port, help="HTTP port (0: a free port, printed at start)"
    )
    gateway.add_argument(
        "--grpc-port",
        type=int,
        default=gw.grpc_port,
        help="gRPC port (0: a free port; -1: no gRPC service)",
    )
    gateway.add_argument("--host", default=gw.host)
    gateway.add_argument("--model-name", default=gw.model_name, help="model name on the backend")
    gateway.add_argument(
        "--backend-timeout",
        type=float,
        default=gw.backend_timeout_s,
        help="deadline of each backend call, seconds",
    )
    gateway.add_argument(
        "--max-image-mb",
        type=float,
        default=gw.max_image_bytes / 2**20,
        help="largest upload (413 above)",
    )
    gateway.add_argument(
        "--max-pixels",
        type=int,
        default=gw.max_pixels,
        help="largest width*height (decompression bombs)",
    )
    gateway.add_argument(
        "--allow-url-host",
        action="append",
        default=[],
        metavar="HOST",
        help="host /predict may fetch from (repeat; '*.example.com' matches subdomains); none: URL fetching off",
    )
    gateway.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="let /predict fetch private and loopback addresses",
    )
    gateway.add_argument(
        "--url-timeout",
        type=float,
        default=gw.url_timeout_s,
        help="total seconds for one URL fetch",
    )
    gateway.add_argument(
        "--token-file", type=Path, help="file holding the bearer token (a mounted secret)"
    )
    gateway.add_argument(
        "--shutdown-grace",
        type=float,
        default=gw.shutdown_grace_s,
        help="seconds to finish in-flight requests on SIGTERM",
    )
    gateway.add_argument(
        "--header-timeout",
        type=float,
        default=gw.header_timeout_s,
        help="seconds a connection has to send a request's complete headers (slow clients are "
        "closed)",
    )
    gateway.add_argument(
        "--idle-timeout",
        type=float,
        default=gw.idle_timeout_s,
        help="seconds an idle keep-alive connection stays open",
    )
    gateway.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes sharing the HTTP and gRPC ports, under uvicorn's supervisor, which "
        "restarts any that dies (/metrics sums them all)",
    )
    from cifarflow.serving.gateway.monitoring.config import MonitorConfig

    monitors = _field_defaults(MonitorConfig)
    gateway.add_argument(
        "--monitors",
        choices=("on", "off"),
        default="on",
        help="an out-of-distribution score on every answer and drift gauges on /metrics "
        "(docs/monitoring.md); off: neither",
    )
    gateway.add_argument(
        "--monitor-store",
        metavar="STORE",
        help="the model store (folder or s3://bucket/prefix, S3_* variables) holding each "
        "version's reference.json; without it answers carry the OOD score but no in/out flag",
    )
    gateway.add_argument(
        "--ood-score",
        choices=("energy", "max_softmax"),
        default=monitors.ood_score,
        help="the out-of-distribution score (bench/results/ood.json compares them)",
    )
    gateway.add_argument(
        "--drift-window",
        type=int,
        default=monitors.window,
        help="images (and answers) in each drift window",
    )
    gateway.set_defaults(func=serve_gateway)

    sync = parts.add_parser(
        "sync",
        help="mirror complete versions from a store into a folder (for TensorFlow Serving)",
        description="Copy complete versions into a temporary folder and rename them into place; keep the newest N.",
    )
    sync.add_argument("--from", dest="source", required=True, help="s3://bucket/prefix or a folder")
    sync.add_argument(
        "--to", dest="dest", required=True, type=Path, help="local folder TensorFlow Serving reads"
    )
    sync.add_argument(
        "--model-name", action="append", default=[], help="model to mirror (repeat; default: all)"
    )
    sync.add_argument(
        "--keep",
        type=int,
        default=2,
        help="newest complete versions to keep (labelled ones are kept too)",
    )
    sync.add_argument("--watch", action="store_true", help="keep syncing every --interval seconds")
    sync.add_argument("--interval", type=float, default=30.0)
    sync.add_argument(
        "--tf-serving-config",
        type=Path,
        metavar="FILE",
        help="also write TensorFlow Serving's --model_config_file here, with the store's labels as version_labels",
    )
    sync.add_argument(
        "--tf-serving-base-path",
        help="the --to folder as TensorFlow Serving sees it (default: --to)",
    )
    add_s3_flags(sync)
    sync.set_defaults(func=serve_sync)


def _logging(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(message)s"
        if args.part == "gateway"
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def serve_sync(args: argparse.Namespace) -> int:
    import signal
    import threading

    from cifarflow.errors import CifarflowError
    from cifarflow.serving.store import open_store
    from cifarflow.serving.store.cli_flags import s3_settings
    from cifarflow.serving.sync import (
        SyncConfig,
        SyncReport,
        sync_once,
        watch,
        write_tf_serving_config,
    )

    _logging(args)
    source = open_store(args.source, s3_settings(args, args.source))
    config = SyncConfig(models=tuple(args.model_name), keep=args.keep, interval_s=args.interval)

    def write_config() -> None:
        if args.tf_serving_config:
            models = list(config.models) or [
                p.name for p in args.dest.iterdir() if p.is_dir() and not p.name.startswith(".")
            ]
            if write_tf_serving_config(
                args.dest, models, args.tf_serving_config, args.tf_serving_base_path
            ):
                print(f"wrote {args.tf_serving_config}", flush=True)

    try:
        report = sync_once(source, args.dest, config)
    except (CifarflowError, OSError) as exc:
        if not args.watch:
            raise
        # A sidecar can start before the store is reachable: wait for it, do not crash-loop.
        logging.getLogger(__name__).warning(
            "sync pass failed, retrying every %.0fs: %s", config.interval_s, exc
        )
        report = SyncReport()
    for model, version in report.added:
        print(f"added {model}/{version}")
    for model, version in report.removed:
        print(f"removed {model}/{version}")
    write_config()
    if args.watch:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            watch(source, args.dest, config, stop, after_pass=write_config)
        except KeyboardInterrupt:
            pass
    return 0


def serve_model(args: argparse.Namespace) -> int:
    from cifarflow.serving.model_server.server import run_model_server
    from cifarflow.serving.store.cli_flags import s3_settings

    _logging(args)
    config = model_server_config(args)
    return run_model_server(config, s3_settings(args, config.store))


def model_server_config(args: argparse.Namespace) -> ModelServerConfig:
    """The ModelServerConfig `serve model`'s flags ask for, TF Serving's flags and files applied."""
    from cifarflow.serving.model_server.config import ModelServerConfig
    from cifarflow.serving.model_server.tf_serving_flags import apply_tf_serving_flags

    config = ModelServerConfig(
        store=args.store or "",
        model_name=args.model_name or "",
        host=args.host,
        grpc_port=args.grpc_port,
        rest_port=args.rest_port,
        label=args.label,
        poll_interval_s=args.poll_interval,
        batching=args.batching,
        max_batch_size=args.max_batch_size,
        batch_timeout_s=args.batch_timeout_ms / 1000.0,
        num_batch_threads=args.num_batch_threads,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        cache_dir=args.cache_dir,
    )
    return apply_tf_serving_flags(args, config)


def serve_gateway(args: argparse.Namespace) -> int:
    from cifarflow.serving.protos import use_protos_only

    use_protos_only()  # the gateway needs TF Serving's messages, not TensorFlow (saves ~550 MB)
    from cifarflow.errors import BadInputError
    from cifarflow.serving.gateway.server import run_gateway

    _logging(args)
    if args.workers < 1:
        raise BadInputError(f"--workers must be 1 or more, got {args.workers}")
    config = gateway_config(args)
    if args.workers > 1:
        from cifarflow.serving.gateway.multiworker import run_workers

        return run_workers(config, args.workers, args.log_level)
    return run_gateway(config)


def gateway_config(args: argparse.Namespace) -> GatewayConfig:
    """The GatewayConfig `serve gateway`'s flags ask for, the token read from its file or env."""
    from cifarflow.serving.gateway.config import GatewayConfig, load_token
    from cifarflow.serving.gateway.monitoring.config import MonitorConfig

    return GatewayConfig(
        backend=args.backend,
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        model_name=args.model_name,
        backend_timeout_s=args.backend_timeout,
        max_image_bytes=int(args.max_image_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        allowed_url_hosts=tuple(args.allow_url_host),
        allow_private_urls=args.allow_private_urls,
        url_timeout_s=args.url_timeout,
        token=load_token(os.environ, args.token_file),
        shutdown_grace_s=args.shutdown_grace,
        header_timeout_s=args.header_timeout,
        idle_timeout_s=args.idle_timeout,
        monitors=MonitorConfig(
            enabled=args.monitors == "on",
            store=args.monitor_store,
            ood_score=args.ood_score,
            window=args.drift_window,
        ),
    )


def _field_defaults(config_class: type) -> argparse.Namespace:
    """A dataclass's field defaults by name, without building (and validating) an instance."""
    return argparse.Namespace(
        **{
            field.name: field.default
            for field in dataclasses.fields(config_class)
            if field.default is not dataclasses.MISSING
        }
    )
