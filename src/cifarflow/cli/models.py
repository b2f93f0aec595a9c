"""`cifarflow models list|show|promote|rollback`: inspect versions and move labels."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cifarflow.serving.store.model_store import ModelStore


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    from cifarflow.serving.store.cli_flags import add_s3_flags

    parser = subparsers.add_parser("models", help=summary, description=summary + ".")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(name: str, text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=text, description=text + ".")
        sub.add_argument("--store", required=True, help="local folder or s3://bucket/prefix")
        sub.add_argument("--model-name", required=True)
        add_s3_flags(sub)
        return sub

    common("list", "list complete versions with their labels and metrics").set_defaults(
        func=list_versions
    )
    show = common("show", "print one version's cifarflow.json (default: the latest)")
    which = show.add_mutually_exclusive_group()
    which.add_argument("--version", type=int)
    which.add_argument("--label")
    show.set_defaults(func=show_version)
    promote = common("promote", "point a label (stable, canary) at a version")
    promote.add_argument("--version", type=int, required=True)
    promote.add_argument("--label", default="stable")
    promote.set_defaults(func=promote_version)
    rollback = common("rollback", "move a label back to the version it named before")
    rollback.add_argument("--label", default="stable")
    rollback.set_defaults(func=rollback_label)


def _store(args: argparse.Namespace):
    from cifarflow.serving.store import open_store
    from cifarflow.serving.store.cli_flags import s3_settings

    return open_store(args.store, s3_settings(args, args.store))


def list_versions(args: argparse.Namespace) -> int:
    from cifarflow.components.candidate import recorded_number

    store = _store(args)
    labels = store.labels(args.model_name)
    # ACCURACY: on the official test set (reported); GATE: on the gate split it was published on.
    print(f"{'VERSION':<8} {'CREATED':<26} {'LABELS':<16} {'ACCURACY':<9} {'GATE':<7} RUN")
    versions = store.versions(args.model_name)
    if not versions:
        print(f"(no complete versions of {args.model_name} in {store.uri})")
    for version in versions:
        manifest = store.manifest(args.model_name, version)
        names = ",".join(sorted(k for k, v in labels.items() if v == version)) or "-"
        test, gate = (
            recorded_number(manifest.get("metrics"), k) for k in ("accuracy", "gate_accuracy")
        )
        acc = "-" if test is None else f"{test:.4f}"
        gate_acc = "-" if gate is None else f"{gate:.4f}"
        print(
            f"{version:<8} {manifest.get('created_at', '-'):<26} {names:<16} {acc:<9} {gate_acc:<7} "
            f"{manifest.get('run_id') or '-'}"
        )
    return 0


def show_version(args: argparse.Namespace) -> int:
    store = _store(args)
    version = store.resolve(args.model_name, args.version, args.label)
    info = store.info(args.model_name, version)
    shown: dict[str, Any] = {
        "model": info.model,
        "version": info.version,
        "labels": list(info.labels),
        "manifest": info.manifest,
    }
    reference = _reference_brief(store, args.model_name, version)
    if reference is not None:
        shown["reference"] = reference
    print(json.dumps(shown, indent=2))
    return 0


def _reference_brief(store: ModelStore, model: str, version: int) -> dict[str, Any] | None:
    """The version's training reference in brief; None for a version published without one."""
    from cifarflow.components.candidate import REFERENCE_FILE
    from cifarflow.errors import BadInputError
    from cifarflow.training_reference import TrainingReference

    data = store.backend.read_bytes(f"{model}/{version}/{REFERENCE_FILE}")
    if data is None:
        return None
    try:
        return TrainingReference.from_json(json.loads(data), REFERENCE_FILE).brief()
    except (ValueError, BadInputError) as exc:  # a newer schema must not hide the manifest
        return {"error": str(exc)}


def promote_version(args: argparse.Namespace) -> int:
    labels = _store(args).promote(args.model_name, args.version, args.label)
    print(f"{args.model_name}: {args.label} -> version {labels[args.label]}")
    return 0


def rollback_label(args: argparse.Namespace) -> int:
    labels = _store(args).rollback(args.model_name, args.label)
    print(f"{args.model_name}: {args.label} -> version {labels[args.label]}")
    return 0
