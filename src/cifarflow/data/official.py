"""Facts about the official CIFAR-100 python archive."""

from __future__ import annotations

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE_DIR = "cifar-100-python"
MEMBERS: tuple[str, ...] = ("train", "test", "meta")

# What ingest writes beside the extracted folder (source, md5s, how verified),
# and preprocess copies into its statistics: the record of where the data came from.
INGEST_RECORD = "ingest.json"

# Published md5 of each member (torchvision publishes train and test; meta's
# is that of the official file).
MEMBER_MD5: dict[str, str] = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}

TRAIN_SIZE = 50_000
TEST_SIZE = 10_000
