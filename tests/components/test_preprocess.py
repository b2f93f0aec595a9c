"""Preprocess on the real data: split sizes, stratification, checks, image folders."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from cifarflow.cli.main import main
from cifarflow.components.ingest.executor import ingest
from cifarflow.components.preprocess.executor import PreprocessConfig, preprocess
from cifarflow.data import cifar_pickle
from cifarflow.data.splits import SPLIT_NAMES, load_split, load_stats
from cifarflow.errors import DataAnomalyError


@pytest.fixture(scope="module")
def sample_raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    ingest("sample", out)
    return out


@pytest.fixture(scope="module")
def sample_batches(sample_archive):
    with tarfile.open(sample_archive) as tar:
        return {m.name.rsplit("/", 1)[-1]: tar.extractfile(m).read() for m in tar if m.isfile()}


def _official_arrays(raw_bytes: bytes):
    batch = cifar_pickle.load_pickle(raw_bytes)
    return batch["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(
        batch["coarse_labels"]
    )


@pytest.mark.full_data
def test_full_dataset_gives_the_exact_split_sizes(tmp_path_factory, full_archive):
    raw = tmp_path_factory.mktemp("full-raw")
    ingest(str(full_archive), raw)
    out = tmp_path_factory.mktemp("full-splits")
    result = preprocess(raw, out)
    assert result.counts == {"train": 40_000, "val": 5_000, "gate": 5_000, "test": 10_000}
    stats = load_stats(out)
    assert stats["splits"]["train"]["class_counts"] == [2000] * 20
    assert stats["splits"]["val"]["class_counts"] == [250] * 20
    assert stats["splits"]["gate"]["class_counts"] == [250] * 20
    assert stats["splits"]["gate"]["fine_class_counts"] == [50] * 100
    assert stats["splits"]["test"]["class_counts"] == [500] * 20
    assert stats["splits"]["val"]["fine_class_counts"] == [50] * 100  # stratified by fine label too
    # the official set has a few exact duplicates across train and test: reported, not fatal
    assert stats["duplicates"]["across"].get("train-test", 0) > 0
    test = load_split(out, "test")
    assert test.images.shape == (10_000, 32, 32, 3) and test.images.dtype == np.uint8


def test_sample_splits_stats_and_untouched_test_set(tmp_path, sample_raw, sample_batches):
    result = preprocess(sample_raw, tmp_path)
    assert result.counts == {"train": 1600, "val": 200, "gate": 200, "test": 500}
    stats = json.loads((tmp_path / "stats.json").read_text())
    for name in SPLIT_NAMES:  # the split layout of data/splits.py
        assert set(stats["splits"][name]) >= {"count", "class_counts"}
        assert len(stats["splits"][name]["class_counts"]) == 20
    assert stats["class_names"][19] == "vehicles_2"
    images, labels = _official_arrays(sample_batches["test"])
    test = load_split(tmp_path, "test")
    assert np.array_equal(test.images, images) and np.array_equal(test.coarse_labels, labels)
    train, val, gate = (load_split(tmp_path, n) for n in ("train", "val", "gate"))
    all_train, _ = _official_arrays(sample_batches["train"])
    # train, val and gate partition the official train set
    merged = np.concatenate([train.images, val.images, gate.images]).reshape(2000, -1)
    assert sorted(map(bytes, merged)) == sorted(map(bytes, all_train.reshape(2000, -1)))
    # the gate is stratified by fine label: 2 of each fine class's 20 images
    assert stats["splits"]["gate"]["fine_class_counts"] == [2] * 100
    assert stats["gate_fraction"] == 0.1
    assert stats["checks"] and all(c["status"] == "pass" for c in stats["checks"])


def test_val_and_gate_splits_are_seeded(tmp_path, sample_raw):
    preprocess(sample_raw, tmp_path / "a", PreprocessConfig(seed=1))
    preprocess(sample_raw, tmp_path / "b", PreprocessConfig(seed=1))
    preprocess(sample_raw, tmp_path / "c", PreprocessConfig(seed=2))
    for split in ("val", "gate"):
        a, b, c = (load_split(tmp_path / n, split).images for n in "abc")
        assert np.array_equal(a, b) and not np.array_equal(a, c), split


def test_training_never_sees_the_gate_split(tmp_path, sample_raw):
    """Train reads its splits by name: exactly train and val, no gate image among them."""
    from cifarflow.components.preprocess.checks import image_hashes
    from cifarflow.components.train.data import load_training_data

    preprocess(sample_raw, tmp_path)
    data = load_training_data(tmp_path)
    train, val, gate = (load_split(tmp_path, n) for n in ("train", "val", "gate"))
    assert np.array_equal(data.train_images, train.images)
    assert np.array_equal(data.val_images, val.images)
    seen = set(image_hashes(data.train_images)) | set(image_hashes(data.val_images))
    assert len(gate) == 200 and not seen & set(image_hashes(gate.images))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gate-fraction", "0"], "gate-fraction must be between 0 and 1"),
        (
            ["--val-fraction", "0.5", "--gate-fraction", "0.5"],
            "val-fraction + gate-fraction must be below 1",
        ),
    ],
)
def test_cli_refuses_gate_fractions_that_leave_nothing(
    tmp_path, sample_raw, capsys, flags, message
):
    args = ["preprocess", "--raw", str(sample_raw), "--out", str(tmp_path / "out"), *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def _write_raw(folder, sample_batches, train_batch):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train").write_bytes(cifar_pickle.dump_batch(train_batch))
    (folder / "test").write_bytes(sample_batches["test"])
    (folder / "meta").write_bytes(sample_batches["meta"])
    return folder


def _train_batch(sample_batches):
    return cifar_pickle.load_pickle(sample_batches["train"])


def test_missing_class_is_an_anomaly_naming_it(tmp_path, sample_batches):
    batch = _train_batch(sample_batches)
    keep = [i for i, c in enumerate(batch["coarse_labels"]) if c != 1]  # drop every fish
    batch = {k: ([v[i] for i in keep] if isinstance(v, list) else v) for k, v in batch.items()}
    batch["data"] = batch["data"][keep]
    raw = _write_raw(tmp_path / "raw", sample_batches, batch)
    with pytest.raises(DataAnomalyError, match="train: every class present: no images of fish"):
        preprocess(raw, tmp_path / "out")
    assert not (tmp_path / "out" / "stats.json").exists()
    assert not (tmp_path / "out" / "train").exists()  # nothing written on failure


def test_label_out_of_range_is_an_anomaly(tmp_path, sample_batches):
    batch = _train_batch(sample_batches)
    batch["coarse_labels"][0] = 20
    raw = _write_raw(tmp_path / "raw", sample_batches, batch)
    with pytest.raises(DataAnomalyError, match="coarse labels in 0..19"):
        preprocess(raw, tmp_path / "out")


def test_fine_label_in_two_coarse_classes_is_an_anomaly(tmp_path, sample_batches):
    batch = _train_batch(sample_batches)
    batch["coarse_labels"][0] = (batch["coarse_labels"][0] + 1) % 20
    raw = _write_raw(tmp_path / "raw", sample_batches, batch)
    with pytest.raises(DataAnomalyError, match="several coarse classes"):
        preprocess(raw, tmp_path / "out")


def test_test_set_leaked_into_train_is_an_anomaly(tmp_path, sample_batches):
    batch = _train_batch(sample_batches)
    test_images = cifar_pickle.load_pickle(sample_batches["test"])["data"]
    batch["data"] = batch["data"].copy()
    batch["data"][:100] = test_images[:100]  # 20 % of the test set copied into train
    raw = _write_raw(tmp_path / "raw", sample_batches, batch)
    with pytest.raises(DataAnomalyError, match="duplicates"):
        preprocess(raw, tmp_path / "out")


def test_wrong_data_shape_is_an_anomaly(tmp_path, sample_batches):
    batch = _train_batch(sample_batches)
    batch["data"] = batch["data"][:, :1024]
    raw = _write_raw(tmp_path / "raw", sample_batches, batch)
    with pytest.raises(DataAnomalyError, match=r"uint8 \[N, 3072\]"):
        preprocess(raw, tmp_path / "out")


# --- image folders ------------------------------------------------------------------


def _save(image: Image.Image, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def _image_folder(root, sample_batches, per_class=12):
    images, labels = _official_arrays(sample_batches["test"])
    names = ["fish", "flowers", "trees"]
    for label, name in zip((1, 2, 17), names, strict=True):
        for i, index in enumerate(np.flatnonzero(labels == label)[:per_class]):
            img = Image.fromarray(images[index]).resize((48 + 16 * (i % 4), 40 + 8 * (i % 3)))
            mode = i % 5
            if mode == 0:
                _save(img, root / name / f"{i}.jpg", quality=90)
            elif mode == 1:
                _save(img.convert("L"), root / name / f"{i}.png")
            elif mode == 2:
                _save(img.convert("RGBA"), root / name / f"{i}.png")
            elif mode == 3:
                _save(img.convert("P"), root / name / f"{i}.gif")
            else:  # rotated pixels plus an EXIF tag that rotates them back
                exif = Image.Exif()
                exif[0x0112] = 6  # orientation: rotate 90° CW to view
                _save(
                    img.transpose(Image.Transpose.ROTATE_90),
                    root / name / f"{i}.jpg",
                    exif=exif,
                    quality=95,
                )
    (root / "fish" / "notes.txt").write_text("not an image, ignored")
    return names


def test_image_folder_class_names_come_from_folders(tmp_path, sample_batches):
    names = _image_folder(tmp_path / "photos", sample_batches)
    result = preprocess(
        tmp_path / "photos",
        tmp_path / "out",
        PreprocessConfig(val_fraction=0.25, test_fraction=0.25),
    )
    stats = load_stats(tmp_path / "out")
    assert stats["class_names"] == names and stats["source"]["kind"] == "image-folder"
    assert sum(result.counts.values()) == 36
    assert all(
        c == [s["count"] // 3] * 3 for s in stats["splits"].values() for c in [s["class_counts"]]
    )
    train = load_split(tmp_path / "out", "train")
    assert train.images.shape[1:] == (32, 32, 3) and train.images.dtype == np.uint8


def test_exif_rotation_is_applied(tmp_path, sample_batches):
    from cifarflow.components.preprocess.sources import read_image_folder

    plain = np.zeros((40, 60, 3), np.uint8)
    plain[:, :30] = 255  # left half white
    for name in ("a", "b"):
        _save(Image.fromarray(plain), tmp_path / name / "plain.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(
        Image.fromarray(plain).transpose(Image.Transpose.ROTATE_90),
        tmp_path / "a" / "rotated.jpg",
        exif=exif,
        quality=100,
    )
    data = read_image_folder(tmp_path)
    upright, rotated = data.train.images[1], data.train.images[0]  # sorted: plain.png, rotated.jpg
    assert np.abs(upright.astype(int) - rotated.astype(int)).mean() < 10


def test_image_folder_with_a_corrupt_file_names_it(tmp_path, sample_batches):
    _image_folder(tmp_path / "photos", sample_batches)
    (tmp_path / "photos" / "trees" / "broken.jpg").write_bytes(
        b"\xff\xd8\xff\xe0 not really a jpeg"
    )
    with pytest.raises(DataAnomalyError, match="broken.jpg"):
        preprocess(tmp_path / "photos", tmp_path / "out")


def test_cli_reports_a_non_dataset_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert (
        main(["preprocess", "--raw", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    )
    assert "neither CIFAR-100 python files nor an image folder" in capsys.readouterr().err
