"""The TFDS → tf.data input pipeline: splits, spec from DatasetInfo, shapes, order, errors."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tfpipeline import data
from tfpipeline.errors import UserError


def test_validation_is_carved_from_the_end_of_train():
    assert data.split_strings(60000, 0.1) == {
        "train": "train[:54000]",
        "validation": "train[54000:]",
        "test": "test",
    }
    quick = data.split_strings(60000, 0.1, quick=True)
    assert quick["train"] == "train[:3000]"
    assert quick["validation"] == "train[54000:55000]"  # still inside the held-out part
    assert quick["test"] == "test"


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1e-9])
def test_bad_validation_fraction_is_a_user_error(fraction):
    with pytest.raises(UserError, match="validation"):
        data.split_strings(60000, fraction)


def test_spec_comes_from_dataset_info(data_dir):
    datasets = data.load("mnist", data_dir=data_dir, quick=True)
    spec = datasets.spec
    assert spec.input_shape == (28, 28, 1)
    assert spec.num_classes == 10
    assert spec.class_names == tuple(str(i) for i in range(10))
    assert spec.num_examples == {"train": 3000, "validation": 1000, "test": 10000}


def test_full_split_sizes(data_dir):
    spec = data.load("mnist", data_dir=data_dir).spec
    assert spec.num_examples == {"train": 54000, "validation": 6000, "test": 10000}


def test_batches_have_raw_uint8_images_and_int_labels(data_dir):
    datasets = data.load("mnist", data_dir=data_dir, quick=True)
    ds = data.make_pipeline(datasets.train, batch_size=64, training=True, seed=0)
    images, labels = next(iter(ds))
    assert images.shape == (64, 28, 28, 1) and images.dtype == tf.uint8
    assert labels.shape == (64,) and labels.dtype == tf.int32
    assert int(tf.reduce_max(images)) > 200  # raw pixels, not scaled: scaling is in the model
    assert set(np.unique(labels.numpy())) <= set(range(10))
    total = sum(int(x.shape[0]) for x, _ in ds)
    assert total == 3000  # the last partial batch is kept


def _epoch_labels(ds):
    return np.concatenate([y.numpy() for _, y in ds])


def test_same_seed_same_order_and_reshuffled_each_epoch(data_dir):
    datasets = data.load("mnist", data_dir=data_dir, quick=True)
    a = data.make_pipeline(datasets.train, batch_size=100, training=True, seed=7)
    b = data.make_pipeline(datasets.train, batch_size=100, training=True, seed=7)
    c = data.make_pipeline(datasets.train, batch_size=100, training=True, seed=8)
    a1, a2 = _epoch_labels(a), _epoch_labels(a)
    b1, b2 = _epoch_labels(b), _epoch_labels(b)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2), "a new order every epoch"
    assert not np.array_equal(a1, _epoch_labels(c)), "another seed, another order"
    assert sorted(a1) == sorted(a2)  # same examples, reordered


def test_evaluation_pipeline_keeps_dataset_order(data_dir):
    datasets = data.load("mnist", data_dir=data_dir, quick=True)
    ds = data.make_pipeline(datasets.test, batch_size=256, training=False, seed=0)
    np.testing.assert_array_equal(_epoch_labels(ds), _epoch_labels(ds))


def test_pipelines_run_without_the_autotuning_thread(data_dir):
    # Deleting an iterator joins that thread, which can sleep up to a minute: the pause it
    # left after a run's last epoch and after search trials (docs/benchmarks.md, issue 28).
    datasets = data.load("mnist", data_dir=data_dir, quick=True)
    streams = [data.make_pipeline(datasets.test, batch_size=256, training=False, seed=0),
               data.make_pipeline(datasets.train, batch_size=64, training=True, seed=0),
               data.make_pipeline(datasets.train, batch_size=64, training=True, seed=0, first_epoch=1, end_epoch=3)]
    assert [stream.options().autotune.enabled for stream in streams] == [False, False, False]
    assert all(stream.options().deterministic for stream in streams)


def test_unknown_dataset_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="Unknown dataset 'no_such_dataset'"):
        data.load("no_such_dataset", data_dir=str(tmp_path))


def test_missing_manual_files_are_named(tmp_path, manual_dir):
    partial = tmp_path / "manual"
    partial.mkdir()
    shutil.copy(manual_dir / "train-images-idx3-ubyte.gz", partial)
    with pytest.raises(UserError) as info:
        data.load("mnist", data_dir=str(tmp_path / "tfds"), manual_dir=partial)
    message = str(info.value)
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert name in message
    assert "train-images-idx3-ubyte.gz" not in message  # present, so not listed as missing
    assert "--manual-dir" in message


def test_missing_manual_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.load("mnist", data_dir=str(tmp_path / "tfds"), manual_dir=tmp_path / "nowhere")


def test_manual_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_MANUAL_DIR, str(tmp_path / "from-env"))
    with pytest.raises(UserError, match="from-env"):
        data.load("mnist", data_dir=str(tmp_path / "tfds"))


def test_corrupt_file_fails_the_checksum(tmp_path, manual_dir):
    corrupt = tmp_path / "manual"
    shutil.copytree(manual_dir, corrupt)
    with gzip.open(corrupt / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"not the published labels")
    with pytest.raises(UserError, match="checksum"):
        data.load("mnist", data_dir=str(tmp_path / "tfds"), manual_dir=corrupt)
    assert not (tmp_path / "tfds" / "mnist" / "3.0.1" / "dataset_info.json").exists()
