"""The restricted unpickler and the official-format writer."""

from __future__ import annotations

import os
import pickle
import tarfile

import numpy as np
import pytest

from cifarflow.data import cifar_pickle
from cifarflow.errors import IntegrityError


class _RunsShell:
    """Unpickling this with the stock unpickler would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evaluates:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


@pytest.fixture(scope="module")
def sample_members(sample_archive):
    with tarfile.open(sample_archive) as tar:
        return {m.name.rsplit("/", 1)[-1]: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _RunsShell(marker)}, protocol=2)
    with pytest.raises(cifar_pickle.UnsafePickleError, match="posix.system|os.system"):
        cifar_pickle.load_pickle(payload, source="evil")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_builtins_eval_is_refused(protocol):
    with pytest.raises(cifar_pickle.UnsafePickleError, match=r"(__builtin__|builtins)\.eval"):
        cifar_pickle.load_pickle(pickle.dumps(_Evaluates(), protocol=protocol))


def test_refusal_names_the_source():
    with pytest.raises(IntegrityError, match="^train: refusing"):
        cifar_pickle.load_pickle(pickle.dumps(_Evaluates(), protocol=2), source="train")


def test_truncated_pickle_is_an_integrity_error(sample_members):
    with pytest.raises(IntegrityError, match="test: not a readable CIFAR pickle"):
        cifar_pickle.load_pickle(sample_members["test"][:5000], source="test")


def test_reads_the_official_meta_and_sample_batches(sample_members):
    meta = cifar_pickle.load_pickle(sample_members["meta"])
    assert (
        len(meta["fine_label_names"]) == 100 and meta["coarse_label_names"][0] == "aquatic_mammals"
    )
    test = cifar_pickle.load_pickle(sample_members["test"])
    assert test["data"].dtype == np.uint8 and test["data"].shape == (500, 3072)
    assert np.bincount(test["coarse_labels"], minlength=20).tolist() == [25] * 20


def test_writer_output_loads_with_the_stock_unpickler_like_the_official_files(sample_members):
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    batch = cifar_pickle.make_batch(images, [1, 2, 3], [4, 5, 6], ["a.png", "b.png", "c.png"], "b")
    raw = cifar_pickle.dump_batch(batch)
    for encoding in ("bytes", "latin1"):  # the two ways CIFAR loaders read the official files
        loaded = pickle.loads(raw, encoding=encoding)
        key = b"data" if encoding == "bytes" else "data"
        restored = loaded[key].reshape(3, 3, 32, 32).transpose(0, 2, 3, 1)
        assert np.array_equal(restored, images)
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw  # the official global name
