"""The small real sample of CIFAR-100 shipped with the package.

`cifar-100-sample.tar.gz` has the official layout and format
(`cifar-100-python/{train,test,meta}`) with 100 train and 25 test images per
coarse class (20 and 5 per fine class, the first ones in official order). It
is built by `scripts/make_sample.py` from the full archive; its whole-file md5
is recorded in `SAMPLE_MD5` and checked by ingest like the official md5s.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_ARCHIVE = Path(__file__).with_name("cifar-100-sample.tar.gz")
SAMPLE_SOURCE = "sample"  # the `--source` keyword that selects this archive
SAMPLE_MD5 = "1dc1a4b2dfd156ee2f45f58a8f4abc38"
