"""Builds the shipped sample archive from the full official CIFAR-100 archive.

Takes the first 20 train and 5 test images of every fine class (100 and 25
per coarse class) in official order, writes them in the official pickle
format, and packs a reproducible tar.gz (fixed mtimes and owners, gzip
without a timestamp), so rebuilding gives the same bytes and the same md5.

Usage: python scripts/make_sample.py [--full PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
import sys
import tarfile
from pathlib import Path

import numpy as np

from cifarflow.data import cifar_pickle, official
from cifarflow.data.sample import SAMPLE_ARCHIVE

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FULL = REPO.parent / "shared" / "data" / "cifar-100-python.tar.gz"
PER_FINE = {"train": 20, "test": 5}
MTIME = 1266624989  # the official archive's date, 2010-02-20


def read_members(path: Path) -> dict[str, bytes]:
    wanted = {f"{official.ARCHIVE_DIR}/{m}": m for m in official.MEMBERS}
    found: dict[str, bytes] = {}
    with tarfile.open(path, "r|gz") as tar:
        for member in tar:
            if member.name in wanted and member.isfile():
                found[wanted[member.name]] = tar.extractfile(member).read()
    return found


def subset(batch: dict, per_fine: int, label: str) -> dict:
    fine = np.asarray(batch["fine_labels"])
    keep = np.sort(np.concatenate([np.flatnonzero(fine == f)[:per_fine] for f in range(100)]))
    images = batch["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)[keep]
    return cifar_pickle.make_batch(
        images,
        [batch["coarse_labels"][i] for i in keep],
        [batch["fine_labels"][i] for i in keep],
        [batch["filenames"][i] for i in keep],
        label,
    )


def pack(files: dict[str, bytes]) -> bytes:
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.GNU_FORMAT) as tar:
        root = tarfile.TarInfo(official.ARCHIVE_DIR)
        root.type, root.mode, root.mtime = tarfile.DIRTYPE, 0o755, MTIME
        tar.addfile(root)
        for name in official.MEMBERS:
            info = tarfile.TarInfo(f"{official.ARCHIVE_DIR}/{name}")
            info.size, info.mode, info.mtime = len(files[name]), 0o644, MTIME
            tar.addfile(info, io.BytesIO(files[name]))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(tar_bytes.getvalue())
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", type=Path, default=DEFAULT_FULL, help="the full official archive")
    parser.add_argument(
        "--out", type=Path, default=SAMPLE_ARCHIVE, help="where to write the sample"
    )
    args = parser.parse_args()
    if not args.full.is_file():
        print(f"make_sample: error: full archive not found: {args.full}", file=sys.stderr)
        return 2
    members = read_members(args.full)
    train = cifar_pickle.load_pickle(members["train"], "train")
    test = cifar_pickle.load_pickle(members["test"], "test")
    files = {
        "train": cifar_pickle.dump_batch(subset(train, PER_FINE["train"], "training batch 1 of 1")),
        "test": cifar_pickle.dump_batch(subset(test, PER_FINE["test"], "testing batch 1 of 1")),
        "meta": members["meta"],  # the official file, unchanged
    }
    archive = pack(files)
    args.out.write_bytes(archive)
    md5 = hashlib.md5(archive).hexdigest()
    for name, data in files.items():
        print(f"{name}: {len(data)} bytes, md5 {hashlib.md5(data).hexdigest()}")
    print(f"{args.out}: {len(archive)} bytes, md5 {md5}")
    init = Path(cifar_pickle.__file__).with_name("sample") / "__init__.py"
    if args.out == SAMPLE_ARCHIVE:
        text = re.sub(r'SAMPLE_MD5 = "[0-9a-f]*".*', f'SAMPLE_MD5 = "{md5}"', init.read_text())
        init.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
