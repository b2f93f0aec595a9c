"""Regenerates the gateway's gRPC Python code from classifier.proto (`make proto`).

The generated modules import each other by their package path
(`cifarflow.serving.gateway.proto.classifier_pb2`), so protoc runs on a copy
of the .proto placed under that path in a temporary tree.

    python -m cifarflow.serving.gateway.proto.generate           # rewrite in place
    python -m cifarflow.serving.gateway.proto.generate --check   # exit 1 if stale
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "classifier.proto"
PACKAGE_PATH = Path("cifarflow/serving/gateway/proto")
GENERATED = ("classifier_pb2.py", "classifier_pb2.pyi", "classifier_pb2_grpc.py")


def generate(out_dir: Path) -> dict[str, bytes]:
    """Runs protoc (grpcio-tools) and returns {file name: contents}."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        (tree / PACKAGE_PATH).mkdir(parents=True)
        shutil.copyfile(PROTO, tree / PACKAGE_PATH / PROTO.name)
        # protoc runs in its own process: its bundled protobuf C++ library and
        # TensorFlow's crash each other when both are loaded in one process.
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{tree}",
                f"--python_out={tree}",
                f"--pyi_out={tree}",
                f"--grpc_python_out={tree}",
                str(PACKAGE_PATH / PROTO.name),
            ],
            cwd=tree,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(
                f"protoc failed with exit code {done.returncode}: {done.stderr.strip()}"
            )
        result = {name: (tree / PACKAGE_PATH / name).read_bytes() for name in GENERATED}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in result.items():
        (out_dir / name).write_bytes(data)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare instead of writing; exit 1 when different"
    )
    args = parser.parse_args(argv)
    if not args.check:
        generate(HERE)
        print(f"generated {', '.join(GENERATED)} in {HERE}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    stale = [
        name
        for name, data in fresh.items()
        if not (HERE / name).is_file() or (HERE / name).read_bytes() != data
    ]
    if stale:
        print(f"out of date: {', '.join(stale)}; run `make proto`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
