"""The dependency lists agree: what setup.cfg installs is what the lock file was resolved from.

`make venv` installs `.[dev,tflite]` constrained by requirements/constraints.txt,
which `make lock` resolves from requirements/*.in. A package listed in one
place and not the other is either installed unpinned or pinned and never
installed (a test tool then missing on a fresh machine).
"""

from __future__ import annotations

import configparser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


def _names(lines: list[str]) -> set[str]:
    return {
        canonicalize_name(Requirement(line).name)
        for line in (raw.split("#", 1)[0].strip() for raw in lines)
        if line
    }


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def _in_file(name: str) -> set[str]:
    return _names((REPO / "requirements" / name).read_text().splitlines())


def test_the_dev_extra_is_the_dev_lock_input():
    extra = _names(_setup_cfg()["options.extras_require"]["dev"].splitlines())
    assert extra == _in_file("dev.in")


def test_every_runtime_dependency_is_in_the_lock_input_and_pinned():
    config = _setup_cfg()
    runtime = _names(config["options"]["install_requires"].splitlines())
    runtime |= _names(config["options.extras_require"]["tflite"].splitlines())
    assert runtime <= _in_file("base.in")
    pinned = _names(
        line.split("==")[0]
        for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines()
    )
    locked = _in_file("base.in") | _in_file("dev.in")
    assert locked <= pinned, f"not pinned in constraints.txt: {sorted(locked - pinned)}"
