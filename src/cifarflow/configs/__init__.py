"""Hyper-parameter grids shipped with cifarflow (`src/cifarflow/configs/<name>.yaml`).

Installed as the package `cifarflow.configs`, so a pipeline step in a pod
resolves a grid by name (`quick`, `cpu`, `gpu`, `reference`) without the
repository.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the shipped grids."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """A shipped grid's name (`quick`) or a path to a YAML file -> the file's path.

    Raises:
        BadInputError: neither a shipped name nor an existing file.
    """
    from cifarflow.errors import BadInputError

    path = Path(name_or_path)
    if path.is_file():
        return path
    # `quick` or `configs/quick.yaml` from a checkout: both name a shipped grid.
    shipped = CONFIG_DIR / (
        path.name if path.suffix in {".yaml", ".yml"} else f"{name_or_path}.yaml"
    )
    if shipped.is_file():
        return shipped
    raise BadInputError(
        f"unknown grid {name_or_path!r}: not a YAML file, and not one of the shipped grids ({', '.join(available()) or 'none'})"
    )
