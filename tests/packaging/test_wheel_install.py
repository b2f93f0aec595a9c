"""The built wheel, installed the way the images install it, runs the pipeline.

Everything else in the suite runs against the editable install in the
checkout, which imports whatever lies under src/: setup.cfg's old hand-kept
package list dropped two component packages from every image, and no test
saw it. Here the wheel is built from what `docker build` would send (the
.dockerignore allow-list), then installed NOT editable into a fresh virtual
environment outside the checkout, as dockerfiles/Dockerfile does: the
dependency layer from requirements/base.in with the lock file, then the
package with the lock file, then `pip check`.

Reinstalling 2.5 GB of TensorFlow per run would not fit CI, so the fresh
environment sees the already installed dependencies the way the image's
venv sees its base image's TensorFlow (--system-site-packages): a .pth file
adds a folder of symlinks to the dev venv's entries, for the package's
runtime dependencies only (install_requires and base.in, followed through
their own requirements, plus pip). The editable cifarflow and the dev-only
tools are left out, so a runtime import of an undeclared dependency fails
here as it would in the image.
"""

from __future__ import annotations

import email.parser
import fnmatch
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path, PurePosixPath

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.k8s.manifests import REPO

pytestmark = pytest.mark.slow

DEV_SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
# What the base image brings besides TensorFlow and pip needs to install.
BASE_IMAGE_TOOLS = ("pip", "setuptools", "wheel")
# pip as the image runs it: the lock file, no cache, and here no index and no
# local config (find-links), so nothing missing can be fetched in silently.
PIP_ENV = {
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_NO_INDEX": "1",
    "PIP_NO_CACHE_DIR": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_INPUT": "1",
}


# --- building and installing, as the image does ------------------------------------------------


def docker_context(repo: Path, dest: Path) -> Path:
    """A copy of what `docker build` sends from `repo`: the .dockerignore allow-list.

    The file starts with `*` and lets paths back in with `!PATH`; `**/NAME`
    lines drop names anywhere below them.
    """
    lines = [
        line.strip()
        for line in (repo / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", ".dockerignore is an allow-list"
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    dropped = shutil.ignore_patterns(
        *(line[3:].rstrip("/") for line in lines if line.startswith("**/"))
    )
    for path in allowed:
        source, target = repo / path, dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=dropped)
        else:
            shutil.copy2(source, target)
    return dest


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result


def build_wheel(context: Path, dest: Path) -> Path:
    """`pip wheel` of the context with this venv's setuptools (no build isolation: no index here)."""
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dest),
            str(context),
        ],
        env={**os.environ, **PIP_ENV},
        timeout=300,
    )
    (wheel,) = dest.glob("cifarflow-*.whl")
    return wheel


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """The wheel's Requires-Dist, extras' requirements left out (the image installs none)."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    requirements = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]


def runtime_closure(roots: list[Requirement]) -> dict[str, importlib.metadata.Distribution]:
    """The dev venv's distributions that `roots` need, following each one's own requirements.

    Raises:
        AssertionError: a needed distribution is not installed in the dev venv.
    """
    installed = {
        canonicalize_name(d.metadata["Name"]): d
        for d in importlib.metadata.distributions(path=[str(DEV_SITE_PACKAGES)])
    }
    closure: dict[str, importlib.metadata.Distribution] = {}
    pending = [(r, frozenset(r.extras)) for r in roots]
    while pending:
        requirement, extras = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in closure:
            continue
        assert name in installed, (
            f"{requirement} is needed at run time but not installed in {DEV_SITE_PACKAGES}"
        )
        closure[name] = dist = installed[name]
        for text in dist.requires or []:
            child = Requirement(text)
            if child.marker is None or any(
                child.marker.evaluate({"extra": e}) for e in {"", *extras}
            ):
                pending.append((child, frozenset(child.extras)))
    return closure


def link_view(dists: dict[str, importlib.metadata.Distribution], view: Path) -> None:
    """Symlinks in `view` to the site-packages entries of `dists`, and nothing of any other distribution.

    A folder shared with a distribution left out (a namespace such as
    google/, or __pycache__/) is made real and linked entry by entry.
    """

    def owned(dist: importlib.metadata.Distribution) -> set[PurePosixPath]:
        assert dist.files is not None, f"{dist.metadata['Name']} has no RECORD"
        return {
            PurePosixPath(f.as_posix()) for f in dist.files if not f.as_posix().startswith("..")
        }

    included = {f for d in dists.values() for f in owned(d)}
    excluded = {
        f
        for d in importlib.metadata.distributions(path=[str(DEV_SITE_PACKAGES)])
        if canonicalize_name(d.metadata["Name"]) not in dists
        for f in owned(d)
    } - included
    shared = {
        parent for f in excluded for parent in f.parents
    }  # folders holding something left out

    def place(entry: PurePosixPath) -> None:
        source, target = DEV_SITE_PACKAGES / entry, view / entry
        if not source.exists() or target.exists():
            return
        if entry not in shared:
            target.symlink_to(source)
            return
        target.mkdir()
        for child in sorted(
            {f.relative_to(entry).parts[0] for f in included if entry in f.parents}
        ):
            place(entry / child)

    view.mkdir()
    for top in sorted({f.parts[0] for f in included}):
        place(PurePosixPath(top))


def fresh_venv(root: Path, view: Path) -> Path:
    """A venv without pip of its own that sees `view` as a site folder, like --system-site-packages."""
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    site = Path(
        run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ]
        ).stdout.strip()
    )
    # addsitedir, not a bare path: .pth files in the view work as they do in a system site folder.
    (site / "zz_dependencies_view.pth").write_text(f"import site; site.addsitedir({str(view)!r})\n")
    return venv


def venv_env(venv: Path) -> dict[str, str]:
    """The environment of a shell in the image: the venv first on PATH, nothing of the checkout's venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"} and not k.startswith("CIFARFLOW_")
    }
    dev_bin = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != dev_bin]
    return {
        **env,
        **PIP_ENV,
        "VIRTUAL_ENV": str(venv),
        "PATH": os.pathsep.join([str(venv / "bin"), *path]),
    }


def install_like_the_image(repo: Path, root: Path) -> dict:
    """Builds the wheel from `repo` and installs it under `root` the way dockerfiles/Dockerfile does."""
    context = docker_context(repo, root / "context")
    wheel = build_wheel(context, root / "dist")
    roots = [*wheel_requirements(wheel), *map(Requirement, BASE_IMAGE_TOOLS)]
    roots += [
        Requirement(line.strip())
        for line in (repo / "requirements" / "base.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    view = root / "dependencies"
    link_view(runtime_closure(roots), view)
    venv = fresh_venv(root, view)
    env = venv_env(venv)
    python = str(venv / "bin" / "python")
    constraints = str(repo / "requirements" / "constraints.txt")
    deps = run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-c",
            constraints,
            "-r",
            str(repo / "requirements" / "base.in"),
        ],
        env=env,
        cwd=root,
        timeout=600,
    )
    package = run(
        [python, "-m", "pip", "install", "-c", constraints, str(wheel)],
        env=env,
        cwd=root,
        timeout=600,
    )
    check = run([python, "-m", "pip", "check"], env=env, cwd=root, timeout=300)
    return {
        "venv": venv,
        "env": env,
        "python": python,
        "wheel": wheel,
        "view": view,
        "deps_log": deps.stdout,
        "package_log": package.stdout,
        "check_log": check.stdout,
    }


# --- reading the compiled pipeline (independently of cifarflow.install_check) --------------------


def compiled_step_imports(pipeline_yaml: Path) -> dict[str, list[tuple[str, str | None]]]:
    """executor -> every (module, name) its embedded program imports, plus the component module itself.

    The programs and their imports are found the way the images' smoke check
    finds them (cifarflow.install_check, tested on its own in
    test_install_check.py). The component module, by the project's layout, is
    cifarflow.components.<step>.component, with F = <step>_component: KFP's
    compile took F from it.
    """
    from cifarflow.install_check import load_pipeline, program_imports, step_programs

    found = {}
    for program in step_programs(load_pipeline(pipeline_yaml)):
        names = [(i.module, i.name) for i in program_imports(program.source)]
        step = program.function.removesuffix("_component")
        names.append((f"cifarflow.components.{step}.component", program.function))
        found[program.executor] = names
    return found


IMPORT_ALL = """
import importlib, json, sys
results = {}
for module, name in json.load(sys.stdin):
    key = module if name is None else f"{module}:{name}"
    try:
        loaded = importlib.import_module(module)
        if name is not None and not hasattr(loaded, name):
            importlib.import_module(f"{module}.{name}")
        results[key] = getattr(loaded, "__file__", None) or "built-in"
    except Exception as exc:
        results[key] = f"FAILED {type(exc).__name__}: {exc}"
print(json.dumps(results))
"""


# --- the tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel-install")
    assert REPO not in root.resolve().parents, "the environment must lie outside the checkout"
    return install_like_the_image(REPO, root)


@pytest.fixture(scope="module")
def workdir(installed, tmp_path_factory):
    """A folder outside the checkout, as a pod's working directory."""
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def compiled(installed, workdir):
    cifarflow = installed["venv"] / "bin" / "cifarflow"
    assert cifarflow.exists(), "the wheel installs the console script"
    run(
        [str(cifarflow), "compile", "-o", "pipeline.yaml"],
        env=installed["env"],
        cwd=workdir,
        timeout=300,
    )
    return workdir / "pipeline.yaml"


def in_venv(installed, path: str) -> bool:
    return Path(path).resolve().is_relative_to(installed["venv"].resolve())


def test_pip_installs_only_the_wheel_and_the_environment_is_consistent(installed):
    assert "Successfully installed" not in installed["deps_log"], (
        "every dependency was already there, as in the image"
    )
    assert "Successfully installed cifarflow-" in installed["package_log"]
    assert installed["package_log"].count("Successfully installed") == 1
    assert "No broken requirements found" in installed["check_log"]


def test_the_checkout_is_not_importable(installed, workdir):
    probe = (
        "import cifarflow, cifarflow.components.expand_grid.executor as g, json, sys; "
        "print(json.dumps([cifarflow.__file__, g.__file__, sys.path]))"
    )
    package, module, path = json.loads(
        run([installed["python"], "-c", probe], env=installed["env"], cwd=workdir).stdout
    )
    assert in_venv(installed, package) and in_venv(installed, module), (package, module)
    assert not any(Path(p).resolve().is_relative_to(REPO) for p in path if p), path
    editable = [
        p.name
        for p in installed["view"].rglob("*")
        if fnmatch.fnmatch(p.name, "__editable__*") or p.name.startswith("cifarflow")
    ]
    assert editable == [], "the view holds nothing of the editable install"


def test_every_module_a_compiled_step_imports_is_installed(installed, workdir, compiled):
    steps = compiled_step_imports(compiled)
    wanted = sorted({i for names in steps.values() for i in names}, key=str)
    assert {"exec-expand-grid-component", "exec-record-status-component"} <= set(steps)
    keys = {m if n is None else f"{m}:{n}" for m, n in wanted}
    # The two packages the hand-kept list dropped.
    assert "cifarflow.components.expand_grid.executor:expand_grid" in keys
    assert "cifarflow.components.record_status.component:record_status_component" in keys
    result = run(
        [installed["python"], "-c", IMPORT_ALL],
        input=json.dumps(wanted),
        env=installed["env"],
        cwd=workdir,
        timeout=300,
    )
    files = json.loads(result.stdout)
    failed = {k: v for k, v in files.items() if v.startswith("FAILED")}
    assert failed == {}
    ours = {k: v for k, v in files.items() if k.startswith("cifarflow")}
    assert len(ours) >= len(steps) and all(in_venv(installed, f) for f in ours.values()), ours


def test_the_images_smoke_check_passes_on_the_wheel(installed, workdir, compiled):
    result = run(
        [
            installed["python"],
            "-m",
            "cifarflow.install_check",
            "--pipeline",
            str(compiled),
            "--json",
        ],
        env=installed["env"],
        cwd=workdir,
        timeout=300,
    )
    report = json.loads(result.stdout)
    assert report["ok"] and report["problems"] == []
    assert set(report["steps"]) == set(compiled_step_imports(compiled))


def one_trial_grid(path: Path) -> Path:
    """The shipped quick grid cut to one trial of one epoch.

    What this test checks is the wheel (every step's code and data reached from
    the installed package); tests/pipelines/test_local_run.py runs the full
    quick grid. One trial instead of two saves about 1.5 minutes of CI.
    """
    grid = yaml.safe_load((REPO / "src" / "cifarflow" / "configs" / "quick.yaml").read_text())
    grid["name"] = "wheel-smoke"
    grid["base"].update(epochs=1, warmup_epochs=0)
    grid["grid"] = {"learning_rate": grid["grid"]["learning_rate"][:1]}
    path.write_text(yaml.safe_dump(grid))
    return path


def test_cifarflow_run_publishes_a_model_from_the_wheel(installed, workdir):
    """`cifarflow run` on the shipped sample (kfp.local, the whole DAG) from the installed package."""
    grid = one_trial_grid(workdir / "wheel-smoke.yaml")
    result = run(
        [str(installed["venv"] / "bin" / "cifarflow"), "run", "--config", str(grid)],
        env=installed["env"],
        cwd=workdir,
        timeout=1200,
    )
    assert ": SUCCEEDED" in result.stdout
    versions = [
        p for p in (workdir / "runs" / "model-store" / "cifarflow").iterdir() if p.name.isdigit()
    ]
    assert len(versions) == 1
    manifest = json.loads((versions[0] / "cifarflow.json").read_text())
    assert (versions[0] / "saved_model.pb").is_file() and manifest["run_id"]
