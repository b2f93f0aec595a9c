"""What a new user does, as real processes: `make run`, serve the model, call it, open the page.

1. the README's main command (`make run`: `cifarflow run` with its defaults)
   from a fresh folder, on the shipped sample;
2. `cifarflow serve model` on the model store that run published to, and
   `cifarflow serve gateway` in front of it;
3. `cifarflow predict` over gRPC on real CIFAR-100 test images (files, a
   folder, both formats), the gateway's REST API including the 2023
   project's `POST /predict {"url": ...}`;
4. the web page in headless Chromium;
5. SIGTERM to both servers, which drain and exit 0.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cifarflow.classes import COARSE_CLASS_NAMES
from tests.serving.browser import Browser, find_chromium
from tests.serving.gateway_support import ImageSite
from tests.serving.images import cifar_test_images, encode
from tests.serving.web_page_scripts import BARS, DROP_FILE
from tests.support.processes import GatewayProcess, ModelServerProcess, cifarflow_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "cifarflow"  # `cifarflow run`'s default
N_IMAGES = 100


def readme_main_command() -> str:
    """The first command of the README's opening code block."""
    block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    return block.splitlines()[0].split("#")[0].strip()


def make_recipe(target: str) -> str:
    """The command `make <target>` runs (its last line: earlier ones would build the venv)."""
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "-n", target],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return dry_run.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[Path, str]:
    """The README's main command, run as a new user runs it, from an empty folder."""
    assert readme_main_command() == "make run"
    recipe = make_recipe("run").split()
    assert Path(recipe[0]).name == "cifarflow" and recipe[1:] == ["run"], recipe
    home = tmp_path_factory.mktemp("new-user")
    done = subprocess.run(
        cifarflow_command() + ["run"], cwd=home, capture_output=True, text=True, timeout=360
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return home, done.stdout


@pytest.fixture(scope="module")
def servers(published, tmp_path_factory):
    home, _ = published
    logs = tmp_path_factory.mktemp("server-logs")
    model_server = ModelServerProcess(
        str(home / "runs" / "model-store"), MODEL_NAME, logs / "model-server.log"
    )
    site = ImageSite()
    gateway = None
    try:
        gateway = GatewayProcess(
            model_server.grpc_address,
            logs / "gateway.log",
            "--allow-url-host",
            "127.0.0.1",
            "--allow-private-urls",
        )
        yield model_server, gateway, site
    finally:
        codes = {
            "gateway": gateway.stop() if gateway else None,
            "model server": model_server.stop(),
        }
        site.close()
    assert codes == {"gateway": 0, "model server": 0}, codes  # both drained on SIGTERM


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The first N sample test images, as a folder of JPEGs and PNGs at several sizes."""
    pixels, labels = cifar_test_images()
    folder = tmp_path_factory.mktemp("photos")
    for i in range(N_IMAGES):
        fmt, size = (("JPEG", 96), ("PNG", 32), ("JPEG", 224), ("PNG", 64))[i % 4]
        (folder / f"{i:03d}.{fmt.lower()}").write_bytes(encode(pixels[i], fmt, size))
    return folder, labels[:N_IMAGES]


def _http(
    url: str, body: bytes | None = None, content_type: str = "application/json"
) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": content_type} if body else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_make_run_publishes_version_1_and_says_where_everything_is(published):
    home, console = published
    version = home / "runs" / "model-store" / MODEL_NAME / "1"
    assert (version / "saved_model.pb").is_file() and (version / "cifarflow.json").is_file()
    assert "SUCCEEDED" in console and "Leaderboard" in console and "artifacts:" in console
    assert f"{MODEL_NAME}" in console and "version 1" in console


def test_predict_over_grpc_beats_chance_on_real_test_images(servers, image_files):
    _, gateway, _ = servers
    folder, labels = image_files
    done = subprocess.run(
        cifarflow_command()
        + ["predict", str(folder), "--server", gateway.grpc_address, "--json", "--top-k", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert len(results) == N_IMAGES and not any(r["error"] for r in results)
    by_file = {Path(r["source"]).name: r for r in results}
    predicted = [
        by_file[f"{i:03d}.{('jpeg', 'png')[i % 2]}"]["predictions"][0][0] for i in range(N_IMAGES)
    ]
    correct = sum(
        name == COARSE_CLASS_NAMES[label] for name, label in zip(predicted, labels, strict=True)
    )
    # The quick grid's model scores ~20 % (chance: 5 %); 10 of 100 is ~4 standard deviations from chance.
    assert correct >= 10, f"{correct} of {N_IMAGES} right"
    for result in results:
        scores = [p for _, p in result["predictions"]]
        assert (
            len(scores) == 3
            and scores == sorted(scores, reverse=True)
            and 0 < sum(scores) <= 1.0001
        )
        assert (result["model"], result["version"]) == (MODEL_NAME, 1)


def test_the_same_image_gets_the_same_answer_over_rest_and_grpc_and_the_2023_contract(
    servers, image_files
):
    _, gateway, site = servers
    folder, _ = image_files
    photo = (folder / "002.jpeg").read_bytes()
    grpc_answer = json.loads(
        subprocess.run(
            cifarflow_command()
            + ["predict", str(folder / "002.jpeg"), "--server", gateway.grpc_address, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )[0]
    status, rest_answer = _http(
        f"{gateway.url}/v1/classify",
        json.dumps({"image_b64": base64.b64encode(photo).decode(), "top_k": 5}).encode(),
    )
    assert status == 200
    assert [p["class"] for p in rest_answer["predictions"]] == [
        name for name, _ in grpc_answer["predictions"]
    ]
    assert rest_answer["predictions"][0]["probability"] == pytest.approx(
        grpc_answer["predictions"][0][1], abs=1e-5
    )
    # The 2023 project's contract: a URL in, {class name: score} for every class out.
    site.routes["/photo.jpg"] = (200, {"Content-Type": "image/jpeg"}, photo)
    status, scores = _http(
        f"{gateway.url}/predict", json.dumps({"url": site.url("/photo.jpg")}).encode()
    )
    assert status == 200 and set(scores) == set(COARSE_CLASS_NAMES)
    assert max(scores, key=scores.get) == rest_answer["predictions"][0]["class"]


def test_the_web_page_classifies_a_dropped_photo(servers, image_files, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    _, gateway, _ = servers
    folder, _ = image_files
    photo = (folder / "000.jpeg").read_bytes()
    browser = Browser(chromium)
    try:
        browser.navigate(f"{gateway.url}/")
        browser.evaluate(DROP_FILE % (base64.b64encode(photo).decode(), "photo.jpg", "image/jpeg"))
        bars = browser.wait_for(
            f"(() => {{ const b = {BARS}; return b.length === 5 ? b : null; }})()"
        )
        assert (
            browser.evaluate("document.getElementById('meta').textContent")
            == f"model {MODEL_NAME}, version 1"
        )
        browser.screenshot(tmp_path / "new_user_page.png")
    finally:
        browser.close()
    status, answer = _http(f"{gateway.url}/v1/classify", photo, "image/jpeg")
    assert status == 200
    # The page shows class names with spaces for underscores.
    assert [b["name"] for b in bars] == [
        p["class"].replace("_", " ") for p in answer["predictions"]
    ]


def test_servers_log_requests_without_errors(servers):
    model_server, gateway, _ = servers
    lines = [json.loads(line) for line in gateway.output().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "request"]
    http = [line for line in requests if line["protocol"] == "http"]
    grpc = [line for line in requests if line["protocol"] == "grpc"]
    assert http and all(line["status"] < 500 for line in http)
    assert grpc and all(line["code"] == "OK" for line in grpc)
    assert all(re.fullmatch(r"[0-9a-f-]{8,}", line["request_id"]) for line in requests)
    assert "Traceback" not in model_server.output() and "Traceback" not in gateway.output()
