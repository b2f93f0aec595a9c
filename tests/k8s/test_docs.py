"""docs/kubernetes.md stays true: the paths it names exist, its cifarflow
commands are accepted by the CLI, its kubectl object names are the manifests'."""

from __future__ import annotations

import contextlib
import io
import re
import shlex

import pytest

from tests.k8s.manifests import REPO, all_folders, render

GUIDE = (REPO / "docs" / "kubernetes.md").read_text()


def _commands(program: str) -> list[str]:
    """Commands of `program` in the guide: lines of ```bash blocks, and inline
    code that is a whole command with flags (not a mention of a verb)."""
    text = GUIDE.replace("\\\n", " ")
    candidates = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        candidates += [(line, True) for line in block.splitlines()]
    candidates += [
        (code, False)
        for code in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    ]
    found = set()
    for candidate, in_block in candidates:
        for piece in re.split(r"&&|;|\|", candidate.split(" #", 1)[0]):
            piece = piece.strip()
            if piece.startswith(program + " ") and (in_block or " --" in piece or " -" in piece):
                found.add(piece)
    return sorted(found)


def test_every_repository_path_named_exists():
    paths = set(re.findall(r"\b((?:k8s|docker|docs)/[\w./-]*\w)", GUIDE))
    assert paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"docs/kubernetes.md names paths that do not exist: {missing}"


@pytest.mark.parametrize("command", _commands("cifarflow"), ids=lambda c: " ".join(c.split()[1:3]))
def test_cifarflow_commands_are_accepted_by_the_cli(command):
    from cifarflow.cli.main import build_parser

    argv = shlex.split(command)[1:]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`{command}` is refused by the CLI: {errors.getvalue()}")


def test_kubectl_commands_name_objects_the_manifests_create():
    names = {
        (o["kind"].lower(), o["metadata"]["name"])
        for folder in all_folders()
        for o in render(folder)
    }
    kinds = {"deployment", "svc", "service", "hpa", "secret"}
    aliases = {"svc": "service", "hpa": "horizontalpodautoscaler"}
    referenced = set()
    for command in _commands("kubectl"):
        if re.search(
            r"-n (?!cifarflow\b)", command
        ):  # another namespace's objects (a store's), not ours
            continue
        for kind, name in re.findall(r"\b(deployment|svc|service|hpa)[/ ]([a-z0-9-]+)", command):
            if kind in kinds:
                referenced.add((aliases.get(kind, kind), name))
    assert referenced
    missing = sorted(r for r in referenced if r not in names)
    assert not missing, f"docs/kubernetes.md refers to objects no manifest creates: {missing}"
