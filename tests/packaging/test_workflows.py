"""The GitHub Actions workflows: linted, and the release's own shell steps run here.

No runner is at hand, so the workflows are linted with jactionlint (with
shellcheck over every `run:` script, both from the dev extra), and the
release steps that hold logic of their own (the release names, the check
that the upstream images exist, the pipeline compile) are run as GitHub
would run them, with a stand-in `docker` where one is needed.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cifarflow import __version__, images
from tests.k8s.manifests import REPO, venv_tool

WORKFLOWS = REPO / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yaml"
UPSTREAM_IMAGES = REPO / "dockerfiles" / "upstream-images.txt"
BASH = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]  # GitHub's `shell: bash` on Linux


def lint(*paths: Path) -> subprocess.CompletedProcess:
    """jactionlint with its default rules, shellcheck on, offline (no GitHub API lookups)."""
    return subprocess.run(
        [
            venv_tool("jactionlint"),
            "--no-color",
            "--format",
            "oneline",
            "--no-online",
            f"--shellcheck={venv_tool('shellcheck')}",
            "--pyflakes=",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def workflow_files() -> list[Path]:
    return sorted(p for p in WORKFLOWS.iterdir() if p.suffix in {".yaml", ".yml"})


def step(workflow: Path, job: str, name: str) -> dict:
    (found,) = [
        s
        for s in yaml.safe_load(workflow.read_text())["jobs"][job]["steps"]
        if s.get("name") == name
    ]
    return found


def run_step(script: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*BASH, "-c", script], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


# --- lint ------------------------------------------------------------------------------------


def test_every_workflow_passes_the_linter():
    files = workflow_files()
    assert {p.name for p in files} >= {"ci.yaml", "release.yaml"}
    result = lint(*files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_linter_really_lints_with_shellcheck(tmp_path):
    """A finding of each kind fails the lint: shellcheck's in a run script, and an injection."""
    bad = tmp_path / ".github" / "workflows" / "bad.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "name: bad\non: push\npermissions:\n  contents: read\n"
        "jobs:\n  a:\n    runs-on: ubuntu-latest\n    timeout-minutes: 5\n    steps:\n"
        "      - run: echo $HOME ${{ github.event.head_commit.message }}\n"
    )
    result = lint(bad)
    assert result.returncode == 1
    assert "SC2086" in result.stdout, "shellcheck ran over the run script"
    assert "[template-injection]" in result.stdout


def test_ci_runs_the_repository_entry_point():
    steps = yaml.safe_load((WORKFLOWS / "ci.yaml").read_text())["jobs"]["test"]["steps"]
    assert [s["run"] for s in steps if "run" in s] == ["bash .ci/run"]


# --- the release's names ----------------------------------------------------------------------


def release_names(
    tmp_path, ref_name: str, owner: str = "Example-Org", repository: str = ""
) -> tuple[int, dict, str]:
    output = tmp_path / "github_output"
    output.write_text("")
    env = {
        "PATH": os.environ["PATH"],
        "REF_NAME": ref_name,
        "OWNER": owner,
        "IMAGE_REPOSITORY": repository,
        "GITHUB_OUTPUT": str(output),
    }
    result = run_step(step(RELEASE, "prepare", "Release names")["run"], env)
    names = dict(line.split("=", 1) for line in output.read_text().splitlines())
    return result.returncode, names, result.stdout


def test_release_names_the_images_as_cifarflow_images_does(tmp_path, monkeypatch):
    code, names, _ = release_names(tmp_path, f"v{__version__}")
    assert code == 0
    assert names == {
        "version": __version__,
        "repository": "ghcr.io/example-org/cifarflow",
        "registry": "ghcr.io",
    }
    matrix = yaml.safe_load(RELEASE.read_text())["jobs"]["images"]["strategy"]["matrix"]["include"]
    pushed = {
        m["variant"]: f"{names['repository']}:{names['version']}{m['suffix']}" for m in matrix
    }
    monkeypatch.setenv("CIFARFLOW_IMAGE_REPOSITORY", names["repository"])
    monkeypatch.setenv("CIFARFLOW_IMAGE_TAG", names["version"])
    assert pushed == {"cpu": images.cpu_image(), "gpu": images.gpu_image()}
    assert {m["dockerfile"] for m in matrix} == {
        "dockerfiles/Dockerfile",
        "dockerfiles/Dockerfile.gpu",
    }


@pytest.mark.parametrize(
    "repository, registry",
    [
        ("registry.example.com:5000/Team/cifarflow", "registry.example.com:5000"),
        ("you/cifarflow", "docker.io"),
    ],
)
def test_release_to_another_registry(tmp_path, repository, registry):
    code, names, _ = release_names(tmp_path, f"v{__version__}", repository=repository)
    assert code == 0 and names["repository"] == repository.lower() and names["registry"] == registry


def test_a_tag_that_is_not_the_package_version_stops_the_release(tmp_path):
    code, names, out = release_names(tmp_path, "v9.9.9")
    assert code == 1 and names == {}
    assert f"does not match the package version {__version__}" in out


# --- the upstream images exist before anything is built --------------------------------------


@pytest.fixture
def fake_docker(tmp_path):
    """A `docker` that logs its arguments and fails `manifest inspect` for images listed in $MISSING."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(
        '#!/bin/sh\necho "$*" >> "$DOCKER_LOG"\n'
        'case " $MISSING " in *" $3 "*) echo "no such manifest: $3" >&2; exit 1 ;; esac\n'
        'echo "{}"\n'
    )
    docker.chmod(docker.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "docker.log"

    def run(missing: str = "") -> tuple[subprocess.CompletedProcess, list[str]]:
        log.write_text("")
        env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "DOCKER_LOG": str(log),
            "MISSING": missing,
        }
        result = run_step(step(RELEASE, "prepare", "Upstream images exist")["run"], env)
        return result, log.read_text().splitlines()

    return run


def upstream_images() -> list[str]:
    return [
        line.split()[1]
        for line in UPSTREAM_IMAGES.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_release_inspects_every_upstream_image(fake_docker):
    result, calls = fake_docker()
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls == [f"manifest inspect {image}" for image in upstream_images()]
    assert len(calls) == 4


def test_a_missing_upstream_image_stops_the_release_and_every_missing_one_is_named(fake_docker):
    gone = [upstream_images()[1], upstream_images()[3]]
    result, calls = fake_docker(missing=" ".join(gone))
    assert result.returncode == 1
    assert len(calls) == 4, "all are checked, not only up to the first missing one"
    for image in gone:
        assert f"image {image}: docker manifest inspect failed" in result.stdout


def test_images_are_built_only_after_the_check():
    jobs = yaml.safe_load(RELEASE.read_text())["jobs"]
    assert jobs["images"]["needs"] == "prepare"
    assert set(jobs["pipeline"]["needs"]) == {"prepare", "images"}
    assert (
        jobs["images"]["permissions"]["packages"] == "write"
        and jobs["pipeline"]["permissions"]["contents"] == "write"
    )


# --- the released pipeline ------------------------------------------------------------------


@pytest.mark.slow
def test_release_compiles_the_pipeline_for_the_pushed_images(tmp_path):
    """The compile step, run as the release runs it: every step's image is one just pushed."""
    compile_step = step(RELEASE, "pipeline", "Compile the pipeline for the released images")
    repository, version = "registry.example.com/team/cifarflow", __version__
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIFARFLOW_IMAGE_")}
    # This venv's `cifarflow` and `python` first, as setup-python and the install put theirs.
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        REPOSITORY=repository,
        VERSION=version,
    )
    result = run_step(compile_step["run"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.rstrip().endswith("OK"), "install_check passed on the released YAML"
    spec = next(
        d
        for d in yaml.safe_load_all((tmp_path / "pipeline.yaml").read_text())
        if "deploymentSpec" in d
    )
    used = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert used == {f"{repository}:{version}", f"{repository}:{version}-gpu"}
