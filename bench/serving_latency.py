"""Benchmark: serving latency and throughput, side by side in one run.

Three paths to the same model, at 1 / 8 / 32 concurrent clients (closed
loop: each client sends its next request when the previous one returns):

- direct: TensorFlow Serving's Predict (stock stub) to `cifarflow serve model`
- gateway-grpc: the gateway's Classifier.Classify, which calls the model server
- gateway-rest: the gateway's POST /v1/classify (raw image/jpeg body, http.client keep-alive)

then direct Predict with server-side batching off (a second model server), and
optionally a soak run: the gateway under load for `--soak-seconds`, its RSS
sampled every few seconds. The model server and the gateway run as their own
processes (`cifarflow serve ...`); clients are threads in this process, which
imports TF Serving's protos without TensorFlow. All of it shares this
machine's cores, so numbers are for comparison within one run. Each
scenario also records the CPU time the model server, the gateway and the
client threads spent per request (from /proc, warm-up included), which says
where the time goes; the summary shows each target beside the previous
recorded run.

The scenarios run in `--rounds` rounds, one after the other; each round
has every path at every client count, so a ratio (gateway against direct,
new gateway against `--baseline`) is measured side by side within a round.
The tables show each scenario's median over the rounds, and each target's
median of its per-round values beside those values: on shared cores, a
single 5 s scenario moves by 10 % or more with the machine's other load.

The gateway's added latency at 1 client comes from the paths taken in turn
(`in_turn`), not from the closed-loop scenarios: each round, one client
sends a request down every path in a fresh shuffled order each cycle, so
every path is timed in the same seconds of the machine's load. Closed-loop
scenarios 5 s apart differed by 1 ms or more at 1 client on shared cores
(1.67 against 3.36 ms in one run), as much as the gateway adds; taken in
turn, the gap between two gateways moved by less than 0.2 ms between rounds.

Targets (TARGETS; issues #6 and #17): the gateway adds <= 1.0 ms p50 over
direct at 1 client (taken in turn), over REST and over gRPC; it keeps
>= 96 % (REST) and >= 90 % (gRPC) of direct throughput at 32 clients;
batching on gives >= 3x batching off at 32 clients; gateway memory flat
over the soak.

Usage:
    python bench/serving_latency.py [--model DIR] [--rounds 3] [--seconds 5] [--soak-seconds 300]

Without --model, an untrained ResNet-20 is exported through the trainer's
real export (`--model-kind resnet20`), or the tiny linear test model of
tests/serving/model_factory.py (`--model-kind tiny`: the numbers then
measure serving overhead, not the network's compute).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.machine import load_average, machine_info  # noqa: E402

RESULTS_JSON = REPO / "bench" / "results" / "serving_latency.json"
RESULTS_MD = REPO / "bench" / "results" / "serving_latency.md"
CLI = [sys.executable, "-m", "cifarflow.cli.main"]
CLIENTS = (1, 8, 32)


EXPORTERS = {
    "resnet20": (
        "import sys\n"
        "from cifarflow.classes import COARSE_CLASS_NAMES\n"
        "from cifarflow.components.train.config import TrialConfig\n"
        "from cifarflow.components.train.export import export_saved_model\n"
        "from cifarflow.components.train.models.build import build_model\n"
        "export_saved_model(build_model(TrialConfig(architecture='resnet', depth=20)).inference, sys.argv[1], COARSE_CLASS_NAMES)\n"
    ),
    "tiny": (
        "import sys\nsys.path.insert(0, sys.argv[2])\n"
        "from tests.serving.model_factory import export_test_model\n"
        "import shutil; shutil.rmtree(sys.argv[1]); export_test_model(sys.argv[1])\n"
    ),
}
MODEL_DESCRIPTIONS = {
    "resnet20": "untrained ResNet-20 (0.27 M params) exported by cifarflow.components.train.export",
    "tiny": "tests/serving/model_factory.py (tiny linear test model)",
}


def published_store(workdir: Path, model: Path | None, kind: str) -> Path:
    """`<workdir>/store` holding `model` as version 1 of `cifarflow`.

    Without `model`, the `kind` test model (EXPORTERS) is exported first, in a
    child process: exporting imports TensorFlow, and the benchmark's own
    process stays light. Leaves the process on the protos-only serving path.
    """
    if model is None:
        model = workdir / "export"
        model.mkdir()
        subprocess.run(
            [sys.executable, "-c", EXPORTERS[kind], str(model), str(REPO)],
            check=True,
            capture_output=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"},
        )
    from cifarflow.serving.protos import use_protos_only

    use_protos_only()
    from cifarflow.serving.store import publish_model

    store = workdir / "store"
    publish_model(model, store, "cifarflow", {})
    return store


def model_server_args(store: Path, grpc_port: int, *extra: str) -> list[str]:
    """`cifarflow serve model` on loopback, gRPC only, quiet: how every benchmark starts it."""
    return [
        "serve",
        "--log-level",
        "WARNING",
        "model",
        "--store",
        str(store),
        "--model-name",
        "cifarflow",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
        "--rest-port",
        "-1",
        *extra,
    ]


def stop_processes(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to every server still running (they drain together), then up to 20 s each."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def gateway_args(backend_port: int, http_port: int, grpc_port: int, *extra: str) -> list[str]:
    """`cifarflow serve gateway` on loopback in front of the model server, quiet."""
    return [
        "serve",
        "--log-level",
        "WARNING",
        "gateway",
        "--backend",
        f"127.0.0.1:{backend_port}",
        "--host",
        "127.0.0.1",
        "--port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        *extra,
    ]


def check_out_baseline(ref: str, dest: Path) -> str:
    """Checks commit `ref` out into a temporary git worktree at `dest`; returns its short id.

    Its gateway then runs from `dest`/src, side by side with this tree's.
    """
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(dest), ref],
        check=True,
        capture_output=True,
    )
    return subprocess.run(
        ["git", "-C", str(dest), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def remove_baseline(dest: Path) -> None:
    """Removes the worktree `check_out_baseline` made (a failed run leaves nothing behind)."""
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(dest)], capture_output=True
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    args: list[str],
    ready_text: str,
    timeout: float = 120,
    cpus: str | None = None,
    source: Path | None = None,
) -> subprocess.Popen:
    """`cifarflow ARGS` once it prints `ready_text`; from the `source` tree's src/ when given."""
    pin = ["taskset", "-c", cpus] if cpus else []
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if source is not None:  # ahead of the editable install's path entry
        env["PYTHONPATH"] = str(source / "src")
    process = subprocess.Popen(
        [*pin, *CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready_text in lines.get(timeout=0.5):
                # Keep draining the pipe so the server never blocks on a full stdout.
                return process
        except queue.Empty:
            if process.poll() is not None:
                break
    process.kill()
    raise RuntimeError(f"{args[:2]} did not start")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one when pid is None), its threads included."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(run, processes: dict[str, int | None]) -> dict[str, object]:
    """Runs a closed loop and adds each process's CPU milliseconds per completed request."""
    before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    row = run()
    completed = max(1, row.get("completed", 0))
    row["cpu_ms_per_request"] = {
        name: round(1000 * (cpu_seconds(pid) - before[name]) / completed, 3)
        for name, pid in processes.items()
    }
    return row


def sample_image() -> bytes:
    """A real CIFAR-100 test image as a 64x64 JPEG, the size of a small upload."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from cifarflow.data.cifar_pickle import load_pickle
    from cifarflow.data.sample import SAMPLE_ARCHIVE

    with tarfile.open(SAMPLE_ARCHIVE) as tar:
        batch = load_pickle(tar.extractfile("cifar-100-python/test").read())
    pixels = np.asarray(batch["data"][0], np.uint8).reshape(3, 32, 32).transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((64, 64), Image.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def memory_soak(
    targets: dict[str, tuple[object, int]], clients: int, seconds: float
) -> dict[str, dict[str, object]]:
    """Closed-loop load on each target at once, its server's RSS sampled every 5 s.

    Args:
        targets: name -> (the `make_call` of closed_loop, the server's pid).
        clients: client threads per target.
        seconds: how long.

    Returns:
        name -> closed_loop's figures, the RSS samples `(s, MB)` and the
        highest RSS in the first and in the last third of the samples.
    """
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    figures: dict[str, dict[str, object]] = {}
    done = threading.Event()

    def sampler() -> None:
        t0 = time.monotonic()
        while not done.wait(5.0):
            for name, (_, pid) in targets.items():
                samples[name].append((round(time.monotonic() - t0, 1), round(rss_mb(pid), 1)))

    def load(name: str) -> None:
        figures[name] = closed_loop(targets[name][0], clients, seconds, warmup=0)

    threads = [threading.Thread(target=sampler, daemon=True)]
    threads += [threading.Thread(target=load, args=(name,)) for name in targets]
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join()
    done.set()
    for name, figure in figures.items():
        rss = [mb for _, mb in samples[name]] or [rss_mb(targets[name][1])]
        third = max(1, len(rss) // 3)
        figure.update(
            rss_mb_samples=samples[name],
            rss_mb_first_third_max=max(rss[:third]),
            rss_mb_last_third_max=max(rss[-third:]),
        )
    return figures


def closed_loop(make_call, clients: int, seconds: float, warmup: float = 1.0) -> dict[str, float]:
    """Runs `clients` threads, each calling its own `make_call()` back to back; latencies after warm-up."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    completed = [0] * clients  # warm-up included, for CPU per request
    start_at = time.monotonic() + warmup
    stop_at = start_at + seconds
    barrier = threading.Barrier(clients)

    def client(index: int) -> None:
        call = make_call()
        barrier.wait()
        while True:
            t0 = time.monotonic()
            if t0 >= stop_at:
                return
            try:
                call()
            except Exception:
                errors[index] += 1
                continue
            t1 = time.monotonic()
            completed[index] += 1
            if t0 >= start_at:
                latencies[index].append(t1 - t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    values = [v for per_client in latencies for v in per_client]
    if not values:
        return {"requests": 0, "errors": sum(errors), "completed": sum(completed)}
    return {
        "requests": len(values),
        "completed": sum(completed),
        "errors": sum(errors),
        "throughput_rps": round(len(values) / seconds, 1),
        **percentiles(values),
    }


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 and p99 of latencies in seconds, in ms; none for no latencies."""
    if not seconds:
        return {}
    values = sorted(seconds)
    return {
        "p50_ms": round(1000 * statistics.median(values), 3),
        "p99_ms": round(1000 * values[min(len(values) - 1, int(0.99 * len(values)))], 3),
    }


def turn_orders(names: list[str], seed: int = 0) -> Iterator[list[str]]:
    """The order of every cycle of `in_turn`: a fresh shuffle each time, from a seeded generator.

    A shuffle rather than a rotation: rotating keeps each path behind the
    same neighbour (B always right after A), and what ran just before a
    path (a warm model server, a busy gateway) is part of its latency.
    """
    generator = random.Random(seed)
    order = list(names)
    while True:
        generator.shuffle(order)
        yield list(order)


def in_turn(makes: dict[str, Callable], seconds: float, warmup: float = 1.0) -> list[dict]:
    """One client calls every path in turn, in a fresh order each cycle; one row per path.

    Each cycle sends one request down every path (turn_orders), so all paths
    are timed under the same moment's load.

    Args:
        makes: path name -> `make_call` (as closed_loop takes).
        seconds: measured seconds, after `warmup` seconds of the same cycles.

    Returns:
        Per path, in `makes` order: path, requests, errors, p50_ms, p99_ms.
    """
    names = list(makes)
    calls = {name: make() for name, make in makes.items()}
    latencies: dict[str, list[float]] = {name: [] for name in names}
    errors = dict.fromkeys(names, 0)
    start_at = time.monotonic() + warmup
    stop_at = start_at + seconds
    for order in turn_orders(names):
        now = time.monotonic()
        if now >= stop_at:
            break
        for name in order:
            t0 = time.monotonic()
            try:
                calls[name]()
            except Exception:
                errors[name] += 1
                continue
            if now >= start_at:
                latencies[name].append(time.monotonic() - t0)
    return [
        {
            "path": name,
            "requests": len(latencies[name]),
            "errors": errors[name],
            **percentiles(latencies[name]),
        }
        for name in names
    ]


def direct_call(target: str, image: bytes):
    import grpc
    import numpy as np
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from cifarflow.serving.tensors import DT_STRING, to_tensor_proto

    def make():
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(target))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "cifarflow"
        request.inputs["image_bytes"].CopyFrom(
            to_tensor_proto(np.array([image], dtype=object), DT_STRING)
        )
        request.output_filter.append("probabilities")  # what the gateway asks for too
        return lambda: stub.Predict(request, timeout=10)

    return make


def gateway_grpc_call(target: str, image: bytes):
    import grpc

    from cifarflow.serving.gateway.proto import classifier_pb2, classifier_pb2_grpc

    def make():
        stub = classifier_pb2_grpc.ClassifierStub(grpc.insecure_channel(target))
        request = classifier_pb2.ClassifyRequest(image=image, top_k=5)
        return lambda: stub.Classify(request, timeout=10)

    return make


def gateway_rest_call(url: str, image: bytes | None):
    """POST `image` as image/jpeg to `url` (GET when `image` is None); a non-200 answer raises."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    method = "GET" if image is None else "POST"

    def make():
        # http.client on a kept-alive connection, like curl or a Go client: the
        # requests library would add ~0.5 ms of client CPU to every call.
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        headers = (
            {}
            if image is None
            else {"Content-Type": "image/jpeg", "Content-Length": str(len(image))}
        )

        def call():
            connection.request(method, parts.path, body=image, headers=headers)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(body[:200])

        return call

    return make


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an exported SavedModel folder to serve")
    parser.add_argument(
        "--model-kind",
        choices=("resnet20", "tiny"),
        default="resnet20",
        help="without --model: an untrained ResNet-20 through the trainer's real export "
        "(real compute per image), or the tiny linear test model (serving overhead only)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per scenario")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of every scenario; tables show medians over them",
    )
    parser.add_argument(
        "--soak-seconds", type=float, default=0.0, help="gateway memory soak (0 skips it)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_JSON)
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run the gateway of this commit (checked out into a temporary git worktree) "
        "side by side, e.g. the last commit before a change to the gateway",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="model server and clients on CPU 0, the gateway on CPU 1: the gateway gets its own "
        "core, as a gateway pod has its own CPU in a cluster, and the model server the same CPU on every path",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.pin:
        if args.out == RESULTS_JSON:
            args.out = RESULTS_JSON.with_name("serving_latency_pinned.json")
        os.sched_setaffinity(0, {0})  # before any client thread exists: they all inherit it

    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    store = published_store(workdir, args.model, args.model_kind)
    image = sample_image()
    processes: list[subprocess.Popen] = []
    results: dict[str, object] = {
        "machine": machine_info(),
        "model": str(args.model or MODEL_DESCRIPTIONS[args.model_kind]),
        "image": f"CIFAR-100 test image as {len(image)}-byte 64x64 JPEG, one per request",
        "seconds_per_scenario": args.seconds,
        "rounds": args.rounds,
        "pinned": args.pin,
        "baseline": None,
        "load_average_before": load_average(),
        "scenarios": [],
        "in_turn_seconds": 2 * args.seconds,
        "in_turn": [],
    }

    def serve_model(batching: bool) -> int:  # the new process is processes[-1]
        port = free_port()
        flags = ["--batching"] if batching else ["--no-batching"]
        processes.append(
            start(
                model_server_args(store, port, *flags),
                "model server:",
                cpus="0" if args.pin else None,
            )
        )
        return port

    try:
        model_port = serve_model(batching=True)
        model_pid = processes[-1].pid
        http_port, gw_grpc_port = free_port(), free_port()
        gateway = start(
            gateway_args(model_port, http_port, gw_grpc_port),
            "gateway: HTTP",
            cpus="1" if args.pin else None,
        )
        processes.append(gateway)
        paths = {
            "direct": direct_call(f"127.0.0.1:{model_port}", image),
            "gateway-grpc": gateway_grpc_call(f"127.0.0.1:{gw_grpc_port}", image),
            "gateway-rest": gateway_rest_call(f"http://127.0.0.1:{http_port}/v1/classify", image),
        }
        gateway_pids = {"gateway-grpc": gateway.pid, "gateway-rest": gateway.pid}
        if args.baseline:
            source = workdir / "baseline"
            commit = check_out_baseline(args.baseline, source)
            results["baseline"] = {"ref": args.baseline, "commit": commit}
            old_http, old_grpc = free_port(), free_port()
            baseline = start(
                gateway_args(model_port, old_http, old_grpc),
                "gateway: HTTP",
                cpus="1" if args.pin else None,
                source=source,
            )
            processes.append(baseline)
            paths["baseline-gateway-grpc"] = gateway_grpc_call(f"127.0.0.1:{old_grpc}", image)
            paths["baseline-gateway-rest"] = gateway_rest_call(
                f"http://127.0.0.1:{old_http}/v1/classify", image
            )
            gateway_pids["baseline-gateway-grpc"] = gateway_pids["baseline-gateway-rest"] = (
                baseline.pid
            )
        unbatched_port = serve_model(batching=False)
        unbatched = {"model_server": processes[-1].pid, "clients": None}
        unbatched_call = direct_call(f"127.0.0.1:{unbatched_port}", image)

        def scenario(round_: int, name: str, batching: bool, clients: int, make, watched) -> None:
            row = {
                "round": round_,
                "path": name,
                "batching": batching,
                "clients": clients,
                **measured(lambda: closed_loop(make, clients, args.seconds), watched),
            }
            print(json.dumps(row), flush=True)
            results["scenarios"].append(row)

        for round_ in range(1, args.rounds + 1):
            for row in in_turn(paths, results["in_turn_seconds"]):
                row = {"round": round_, **row}
                print(json.dumps({"in_turn": row}), flush=True)
                results["in_turn"].append(row)
            for clients in CLIENTS:
                for name, make in paths.items():
                    watched = {"model_server": model_pid, "clients": None}
                    if name != "direct":
                        watched["gateway"] = gateway_pids[name]
                    scenario(round_, name, True, clients, make, watched)
            for clients in CLIENTS:
                scenario(round_, "direct", False, clients, unbatched_call, unbatched)
        processes.pop().send_signal(signal.SIGTERM)
        if args.soak_seconds > 0:
            soak = memory_soak(
                {"gateway-rest": (paths["gateway-rest"], gateway.pid)}, 8, args.soak_seconds
            )
            results["soak"] = {"clients": 8, "path": "gateway-rest", **soak["gateway-rest"]}
            print(
                json.dumps({k: v for k, v in results["soak"].items() if k != "rss_mb_samples"}),
                flush=True,
            )
    finally:
        stop_processes(processes)
        if args.baseline:
            remove_baseline(workdir / "baseline")
    results["load_average_after"] = load_average()
    results["round_summaries"] = [
        summarise(
            [row for row in results["scenarios"] if row["round"] == round_],
            [row for row in results["in_turn"] if row["round"] == round_],
        )
        for round_ in range(1, args.rounds + 1)
    ]
    results["summary"] = median_summary(results["round_summaries"])
    try:
        previous = json.loads(args.out.read_text())
        results["previous"] = {
            "date": previous["machine"]["date"],
            "commit": previous["machine"]["git_commit"],
            "load_average_before": previous.get("load_average_before"),
            "load_average_after": previous.get("load_average_after"),
            "summary": previous["summary"],
        }
    except (OSError, ValueError, KeyError):
        pass
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    md = args.out.with_suffix(".md")
    md.write_text(markdown(results))
    print(md.read_text())
    return 0


def _row(scenarios, path, clients, batching=True):
    return next(
        s
        for s in scenarios
        if s["path"] == path and s["clients"] == clients and s["batching"] == batching
    )


# summary key -> (goal text, test on the value); the targets of issues #6 and #17.
TARGETS = {
    "gateway_grpc_added_p50_ms_at_1": ("<= 1.0 ms", lambda v: v <= 1.0),
    "gateway_rest_added_p50_ms_at_1": ("<= 1.0 ms", lambda v: v <= 1.0),
    "gateway_grpc_throughput_share_at_32": (">= 0.90", lambda v: v >= 0.90),
    "gateway_rest_throughput_share_at_32": (">= 0.96", lambda v: v >= 0.96),
    "batching_speedup_at_32": (">= 3", lambda v: v >= 3),
}


def summarise(scenarios: list[dict], turns: list[dict]) -> dict[str, object]:
    """One round's targets: added p50s from its paths taken in turn, the rest from its scenarios."""
    at_1 = {row["path"]: row for row in turns}
    direct1, gw1, rest1 = at_1["direct"], at_1["gateway-grpc"], at_1["gateway-rest"]
    direct32 = _row(scenarios, "direct", 32)
    off32 = _row(scenarios, "direct", 32, False)

    def ratio(a: dict, b: dict, digits: int):  # None when a scenario completed no request
        return (
            round(a["throughput_rps"] / b["throughput_rps"], digits)
            if "throughput_rps" in a and "throughput_rps" in b
            else None
        )

    def added(a: dict, b: dict):
        return round(a["p50_ms"] - b["p50_ms"], 3) if "p50_ms" in a and "p50_ms" in b else None

    summary = {
        "gateway_grpc_added_p50_ms_at_1": added(gw1, direct1),
        "gateway_rest_added_p50_ms_at_1": added(rest1, direct1),
        "gateway_grpc_throughput_share_at_32": ratio(
            _row(scenarios, "gateway-grpc", 32), direct32, 3
        ),
        "gateway_rest_throughput_share_at_32": ratio(
            _row(scenarios, "gateway-rest", 32), direct32, 3
        ),
        "batching_speedup_at_32": ratio(direct32, off32, 2),
    }
    if any(s["path"].startswith("baseline-") for s in scenarios):
        for kind in ("grpc", "rest"):
            path = f"baseline-gateway-{kind}"
            summary[f"baseline_gateway_{kind}_added_p50_ms_at_1"] = added(at_1[path], direct1)
            summary[f"baseline_gateway_{kind}_throughput_share_at_32"] = ratio(
                _row(scenarios, path, 32), direct32, 3
            )
    # Where the time goes at 32 clients: CPU per request of each process (all share the cores).
    for name, row in (
        ("direct_on", direct32),
        ("direct_off", off32),
        ("gateway_grpc", _row(scenarios, "gateway-grpc", 32)),
        ("gateway_rest", _row(scenarios, "gateway-rest", 32)),
        *(
            (name.replace("-", "_"), _row(scenarios, name, 32))
            for name in ("baseline-gateway-grpc", "baseline-gateway-rest")
            if any(s["path"] == name for s in scenarios)
        ),
    ):
        if "cpu_ms_per_request" in row:
            summary[f"cpu_ms_per_request_at_32_{name}"] = row["cpu_ms_per_request"]
    return summary


def _medians(rows: list[dict], keys: tuple[str, ...]) -> dict[str, float]:
    """Each key's median over the rows that have it (rounded to 3 places); absent where none do."""
    medians = {}
    for key in keys:
        values = [row[key] for row in rows if key in row]
        if values:
            medians[key] = round(statistics.median(values), 3)
    return medians


def median_rows(scenarios: list[dict]) -> list[dict]:
    """One row per scenario (path, batching, clients), in run order: medians over its rounds.

    Errors and request counts are summed; throughput, p50, p99 and each
    process's CPU per request are the medians of the rounds that have them.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in scenarios:
        groups.setdefault((row["path"], row["batching"], row["clients"]), []).append(row)
    merged = []
    for (path, batching, clients), rows in groups.items():
        row: dict[str, object] = {
            "path": path,
            "batching": batching,
            "clients": clients,
            "rounds": len(rows),
            "errors": sum(r["errors"] for r in rows),
            "requests": sum(r.get("requests", 0) for r in rows),
        }
        row.update(_medians(rows, ("throughput_rps", "p50_ms", "p99_ms")))
        cpu = [r["cpu_ms_per_request"] for r in rows if r.get("cpu_ms_per_request")]
        if cpu:
            row["cpu_ms_per_request"] = {
                name: round(statistics.median(c[name] for c in cpu if name in c), 3)
                for name in cpu[0]
            }
        merged.append(row)
    return merged


def median_in_turn(turns: list[dict]) -> list[dict]:
    """The paths taken in turn, one row each: medians over the rounds, and the added p50.

    `added_p50_ms` is the median of each round's p50 less that round's direct
    p50 (a difference measured within one round), not a difference of medians.
    """
    rounds = sorted({row["round"] for row in turns})
    by_round = {r: {row["path"]: row for row in turns if row["round"] == r} for r in rounds}
    merged = []
    for path in dict.fromkeys(row["path"] for row in turns):
        rows = [by_round[r][path] for r in rounds if path in by_round[r]]
        row: dict[str, object] = {
            "path": path,
            "rounds": len(rows),
            "requests": sum(r["requests"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
        }
        row.update(_medians(rows, ("p50_ms", "p99_ms")))
        added = [
            by_round[r][path]["p50_ms"] - by_round[r]["direct"]["p50_ms"]
            for r in rounds
            if "p50_ms" in by_round[r].get(path, {}) and "p50_ms" in by_round[r].get("direct", {})
        ]
        if path != "direct" and added:
            row["added_p50_ms"] = round(statistics.median(added), 3)
        merged.append(row)
    return merged


def median_summary(round_summaries: list[dict]) -> dict[str, object]:
    """Each summary value's median over the rounds (None where no round has one)."""
    summary: dict[str, object] = {}
    for key, first in round_summaries[0].items():
        if isinstance(first, dict):  # CPU ms per request, by process
            summary[key] = {
                name: round(statistics.median(r[key][name] for r in round_summaries), 3)
                for name in first
            }
            continue
        values = [r[key] for r in round_summaries if r.get(key) is not None]
        summary[key] = round(statistics.median(values), 3) if values else None
    return summary


def _cpu_text(row: dict) -> str:
    cpu = row.get("cpu_ms_per_request")
    if not cpu:
        return "-"
    return " / ".join(
        f"{cpu[name]:.2f}" if name in cpu else "-"
        for name in ("model_server", "gateway", "clients")
    )


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Serving latency",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, {m['date']} "
        f"(commit {m['git_commit']}). Model: {results['model']}. {results['image']}. "
        f"{results['seconds_per_scenario']:g} s per scenario after 1 s warm-up, "
        f"{results.get('rounds', 1)} round(s) of every scenario; medians over the rounds. "
        + (
            "Pinned: model server and clients on CPU 0, gateway on CPU 1."
            if results.get("pinned")
            else "Model server, gateway and clients share both cores."
        )
        + f" Load average before/after: {' '.join(results['load_average_before'])} / {' '.join(results['load_average_after'])}"
        " (other engineers' jobs share this machine).",
        "",
        "CPU ms per request: the model server, gateway and client threads' CPU time over the scenario "
        "(warm-up included) divided by the requests they completed.",
        "",
        "| path | batching | clients | throughput (req/s) | p50 (ms) | p99 (ms) | errors | CPU ms/request: model server / gateway / clients |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in median_rows(results["scenarios"]):
        lines.append(
            f"| {s['path']} | {'on' if s['batching'] else 'off'} | {s['clients']} | {s.get('throughput_rps', 0)} | "
            f"{s.get('p50_ms', '-')} | {s.get('p99_ms', '-')} | {s['errors']} | {_cpu_text(s)} |"
        )
    if results.get("in_turn"):
        lines += [
            "",
            f"1 client, every path in turn ({results['in_turn_seconds']:g} s a round): one client "
            "sends a request down each path, in a fresh random order every cycle, so all paths are "
            "timed under the same moment's load. The added p50 is the median of each round's "
            "p50 less that round's direct p50; the 1-client targets below come from here.",
            "",
            "| path | requests | errors | p50 (ms) | p99 (ms) | added p50 over direct (ms) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for t in median_in_turn(results["in_turn"]):
            lines.append(
                f"| {t['path']} | {t['requests']} | {t['errors']} | {t.get('p50_ms', '-')} | "
                f"{t.get('p99_ms', '-')} | {t.get('added_p50_ms', '-')} |"
            )
    previous = results.get("previous")
    baseline = results.get("baseline")
    rounds = results.get("round_summaries", [])

    def each_round(key: str) -> str:
        return " / ".join(str(r.get(key, "-")) for r in rounds)

    # (heading, value of a target key) for every column after the goal, in order.
    columns: list[tuple[str, Callable[[str], object]]] = [
        ("this run", lambda key: results["summary"][key])
    ]
    if len(rounds) > 1:
        columns.append(("rounds", each_round))
    if baseline:
        columns.append(
            (
                f"baseline (commit {baseline['commit']})",
                lambda key: results["summary"].get("baseline_" + key, "-"),
            )
        )
        if len(rounds) > 1:
            columns.append(("baseline rounds", lambda key: each_round("baseline_" + key)))
    if previous:
        columns.append(
            (
                f"previous run ({previous['date'][:16]}, commit {previous['commit']})",
                lambda key: previous["summary"].get(key, "-"),
            )
        )
    lines += [
        "",
        "| target | goal | " + " | ".join(name for name, _ in columns) + " | met |",
        "|---|---|" + "---:|" * len(columns) + "---|",
    ]
    for key, (goal, met) in TARGETS.items():
        value = results["summary"][key]
        cells = " | ".join(str(column(key)) for _, column in columns)
        lines.append(
            f"| {key} | {goal} | {cells} | {'yes' if value is not None and met(value) else 'no'} |"
        )
    if "soak" in results:
        soak = results["soak"]
        growth = soak["rss_mb_last_third_max"] - soak["rss_mb_first_third_max"]
        rest = " - |" * (len(columns) - 1)
        lines.append(
            f"| gateway RSS growth over the soak (MB) | flat (< 5 %) | {growth:+.1f} |{rest} "
            f"{'yes' if growth < 0.05 * soak['rss_mb_first_third_max'] else 'no'} |"
        )
    if previous and previous.get("load_average_before"):
        lines += [
            "",
            f"Previous run's load average before/after: {' '.join(previous['load_average_before'])} / "
            f"{' '.join(previous.get('load_average_after') or [])}.",
        ]
    cpu_rows = {k: v for k, v in results["summary"].items() if k.startswith("cpu_ms_per_request")}
    if cpu_rows:
        lines += [
            "",
            "CPU ms per request at 32 clients: "
            + "; ".join(
                f"{k.removeprefix('cpu_ms_per_request_at_32_')}: "
                + ", ".join(f"{name} {ms}" for name, ms in v.items())
                for k, v in cpu_rows.items()
            ),
        ]
    if "soak" in results:
        soak = results["soak"]
        lines += [
            "",
            f"Soak: gateway REST, {soak['clients']} clients, {soak['requests']} requests, {soak['errors']} errors; "
            f"gateway RSS max {soak['rss_mb_first_third_max']} MB in the first third, "
            f"{soak['rss_mb_last_third_max']} MB in the last third.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
