"""`tensorflow_model_server`'s flags, taken by `cifarflow serve model` as another way in.

The flags the manifests pass to TF Serving are accepted spelled as TF
Serving spells them (tensorflow_serving/model_servers/main.cc, tag 2.20.0)
and mean what they mean there, so the tf-serving container's exact argument
list starts this server too. Where a TF Serving flag means what a cifarflow
flag means, it sets the same option; flags not given keep cifarflow's
defaults. Booleans take TensorFlow's forms (`--flag`, `--flag=true`,
`--flag=false`; anything else is refused); values are written `--flag=VALUE`
(argparse also takes `--flag VALUE`, which TF Serving would ignore).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI registers these flags on every run: keep grpc and numpy out of that
    from cifarflow.serving.model_server.config import ModelServerConfig

log = logging.getLogger(__name__)


def tf_bool(value: str) -> bool:
    """A TensorFlow command-line boolean: only `true` and `false` (command_line_flags.cc ParseBoolFlag)."""
    if value in ("true", "false"):
        return value == "true"
    raise argparse.ArgumentTypeError(
        f"Couldn't interpret value ={value} (TF Serving takes =true or =false)"
    )


def add_tf_serving_flags(parser: argparse.ArgumentParser) -> None:
    """Adds the flags, in a group of their own in --help."""
    group = parser.add_argument_group(
        "TensorFlow Serving's flags",
        "tensorflow_model_server's own flags, with its meaning; --model_config_file replaces --store and --model-name",
    )
    group.add_argument(
        "--port",
        dest="tf_port",
        type=int,
        metavar="N",
        help="gRPC port (like --grpc-port; 0 is refused, as TF Serving does)",
    )
    group.add_argument(
        "--rest_api_port",
        dest="tf_rest_api_port",
        type=int,
        metavar="N",
        help="REST port; 0: no REST",
    )
    group.add_argument(
        "--model_config_file",
        dest="tf_model_config_file",
        type=Path,
        metavar="FILE",
        help="ModelServerConfig text protobuf: one model, its base_path, version policy and labels",
    )
    group.add_argument(
        "--model_config_file_poll_wait_seconds",
        dest="tf_config_poll",
        type=int,
        default=0,
        metavar="S",
        help="re-read --model_config_file every S seconds (0: once)",
    )
    group.add_argument(
        "--allow_version_labels_for_unavailable_models",
        dest="tf_allow_unavailable_labels",
        type=tf_bool,
        nargs="?",
        const=True,
        default=False,
        metavar="true|false",
        help="let the config label versions not loaded yet (not moving a label already assigned)",
    )
    group.add_argument(
        "--enable_batching",
        dest="tf_enable_batching",
        type=tf_bool,
        nargs="?",
        const=True,
        metavar="true|false",
        help="server-side batching (like --batching/--no-batching)",
    )
    group.add_argument(
        "--batching_parameters_file",
        dest="tf_batching_parameters_file",
        type=Path,
        metavar="FILE",
        help="BatchingParameters text protobuf (needs --enable_batching)",
    )
    group.add_argument(
        "--monitoring_config_file",
        dest="tf_monitoring_config_file",
        type=Path,
        metavar="FILE",
        help="MonitoringConfig text protobuf: prometheus_config { enable path }",
    )
    group.add_argument(
        "--grpc_channel_arguments",
        dest="tf_grpc_channel_arguments",
        metavar="K=V,...",
        help="gRPC server arguments, e.g. grpc.max_connection_age_ms=60000 (ints as ints)",
    )
    group.add_argument(
        "--file_system_poll_wait_seconds",
        dest="poll_interval",
        type=int,
        default=argparse.SUPPRESS,
        metavar="S",
        help="seconds between checks for new versions (like --poll-interval; 0: once)",
    )


def parse_grpc_channel_arguments(text: str) -> tuple[tuple[str, int | str], ...]:
    """`k=v,k=v` -> gRPC server options, a value that reads as an int passed as one (server.cc:398-410).

    Raises:
        InvalidInput: a pair without `=` (TF Serving would index past its split).
    """
    from cifarflow.serving.errors import InvalidInput

    options: list[tuple[str, int | str]] = []
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--grpc_channel_arguments: {pair!r} is not KEY=VALUE")
        try:
            options.append((key, int(value)))
        except ValueError:
            options.append((key, value))
    return tuple(options)


def apply_tf_serving_flags(
    args: argparse.Namespace, config: ModelServerConfig
) -> ModelServerConfig:
    """`config` (built from the cifarflow flags) with the TF Serving flags applied.

    Raises:
        BadInputError: the two ways in are mixed, or neither names a model.
        ServerStartError: TF Serving would refuse to start with these flags
            or files ("Failed to start server. Error: ...").
    """
    from cifarflow.serving.errors import ServingError
    from cifarflow.serving.model_server.tf_serving_config import ServerStartError

    try:
        return _apply(args, config)
    except ServingError as exc:
        raise ServerStartError(exc) from None


def _apply(args: argparse.Namespace, config: ModelServerConfig) -> ModelServerConfig:
    from cifarflow.errors import BadInputError
    from cifarflow.serving.errors import InvalidInput
    from cifarflow.serving.model_server.batching import BatchingConfig
    from cifarflow.serving.model_server.tf_serving_config import (
        TfServingOptions,
        load_batching_parameters,
        load_model_config,
        load_prometheus_path,
    )

    changes: dict = {}
    if args.tf_port is not None:
        if args.tf_port == 0:  # server.cc:183-188 (no --grpc_socket_path here)
            raise InvalidInput(
                "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set."
            )
        changes["grpc_port"] = args.tf_port
    if args.tf_rest_api_port is not None:
        grpc_port = changes.get("grpc_port", config.grpc_port)
        if (
            args.tf_rest_api_port == grpc_port
        ):  # server.cc:437-459: logged, REST skipped, the server runs on
            log.error(
                "server_options.http_port cannot be same as grpc_port. Please use a different port for "
                "HTTP/REST API. Skipped exporting HTTP/REST API."
            )
        changes["rest_port"] = (
            args.tf_rest_api_port if args.tf_rest_api_port not in (0, grpc_port) else -1
        )
    if args.tf_enable_batching is not None:
        changes["batching"] = args.tf_enable_batching
    if args.tf_batching_parameters_file is not None:
        if not args.tf_enable_batching:  # server.cc:239-242
            raise InvalidInput(
                "server_options.batching_parameters_file is set without setting "
                "server_options.enable_batching to true."
            )
        batching = load_batching_parameters(
            args.tf_batching_parameters_file,
            BatchingConfig(
                config.max_batch_size,
                config.batch_timeout_s,
                config.num_batch_threads,
                config.max_queued_requests,
            ),
        )
        changes.update(
            max_batch_size=batching.max_batch_size,
            batch_timeout_s=batching.timeout_s,
            num_batch_threads=batching.num_threads,
            max_queued_requests=batching.max_queued,
        )
    if args.tf_grpc_channel_arguments:
        changes["grpc_channel_arguments"] = parse_grpc_channel_arguments(
            args.tf_grpc_channel_arguments
        )
    if args.tf_monitoring_config_file is not None:
        changes["metrics_path"] = load_prometheus_path(args.tf_monitoring_config_file)
    if args.tf_model_config_file is None:
        # Like TF Serving, the label and config-poll flags do nothing without a config file.
        if not (config.store and config.model_name):
            raise BadInputError(
                "give --store and --model-name, or TF Serving's --model_config_file"
            )
        return dataclasses.replace(config, **changes)
    if config.store or config.model_name or config.label:
        raise BadInputError(
            "--model_config_file names the model and its folder: drop --store, --model-name and --label"
        )
    model = load_model_config(args.tf_model_config_file)
    changes["tf_serving"] = TfServingOptions(
        model_config_file=args.tf_model_config_file,
        model=model,
        config_poll_s=float(args.tf_config_poll),
        allow_version_labels_for_unavailable_models=args.tf_allow_unavailable_labels,
    )
    return dataclasses.replace(config, store=str(model.base_path), model_name=model.name, **changes)
