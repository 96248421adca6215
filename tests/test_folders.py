"""Folder datasets: layouts, seeded splits, bad files, sizes and channels, the cache decision,
and the serving_bytes signature fed the raw files. Every folder is drawn by the test."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from folder_factory import CLASSES, add_broken, flat_folder, split_folder, write_images
from PIL import Image

from tfpipeline import argtypes, data, export, models
from tfpipeline.data import folders, imaging
from tfpipeline.errors import UserError
from tfpipeline.inputs import image as image_input

ROOT = Path(__file__).resolve().parents[1]


def relative(paths, root):
    return sorted(Path(p).relative_to(root).as_posix() for p in paths)


# --- layouts and splits -------------------------------------------------------------------

def test_split_layout_skips_and_reports_bad_files(tmp_path):
    root = split_folder(tmp_path / "shapes", train=12, test=4)
    broken = add_broken(root / "train" / "square", np.random.default_rng(1))
    broken += [p.rename(p.with_name("test_" + p.name))
               for p in add_broken(root / "test" / "circle", np.random.default_rng(2))]
    idx = folders.index(root, validation_fraction=0.25, seed=3)
    assert idx.layout == "split" and idx.class_names == CLASSES
    reasons = {Path(p).relative_to(root).as_posix(): why for p, why in idx.skipped}
    for path in broken:
        assert "does not decode" in reasons[path.relative_to(root).as_posix()]
    for stray in (".DS_Store", "notes.txt", "train/square/.DS_Store", "train/square/notes.txt"):
        assert reasons[stray].startswith("not an image")
    used = {p for role in idx.files for p in idx.files[role]}
    assert not used & {str(p) for p in broken}
    # test/ is read as it is; validation is held out of train/: the files whose hash falls below 0.25.
    assert len(idx.files["test"]) == 12 and all("/test/" in p for p in idx.files["test"])
    assert len(idx.files["validation"]) + len(idx.files["train"]) == 36
    assert all("/train/" in p for p in idx.files["validation"]) and idx.files["validation"]
    paths = [Path(p).relative_to(root / "train").as_posix() for p in [*idx.files["train"], *idx.files["validation"]]]
    held = {Path(p).relative_to(root / "train").as_posix() for p in idx.files["validation"]}
    assert held == {path for path in paths if folders._hash_fraction(3, path) < 0.25}
    # The label is the class folder.
    for role in idx.files:
        for path, label in zip(idx.files[role], idx.labels[role]):
            assert Path(path).parent.name == CLASSES[label]


def test_flat_layout_split_is_seeded_and_stable(tmp_path):
    root = flat_folder(tmp_path / "flat", per_class=20)
    a = folders.index(root, validation_fraction=0.2, seed=7)
    b = folders.index(root, validation_fraction=0.2, seed=7)
    c = folders.index(root, validation_fraction=0.2, seed=8)
    assert a.layout == "flat"
    for role in ("train", "validation", "test"):
        assert relative(a.files[role], root) == relative(b.files[role], root)
    assert relative(a.files["test"], root) != relative(c.files["test"], root)
    sets = [set(a.files[r]) for r in ("train", "validation", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(map(len, sets)) == 60 and all(sets)
    assert a.split_rule["held_out"]["test"]["seed"] == 7


def test_a_file_keeps_its_split_when_many_files_are_added(tmp_path):
    root = flat_folder(tmp_path / "flat", per_class=20)
    before = folders.index(root, validation_fraction=0.2, seed=7)
    role_of = {path: role for role in ("train", "validation", "test") for path in relative(before.files[role], root)}
    rng = np.random.default_rng(5)
    for kind in ("circle", "square", "triangle"):  # five times as many files, unevenly per class
        write_images(root / kind, kind, {"circle": 150, "square": 60, "triangle": 90}[kind], rng, start=500,
                     sizes=(8, 12))
    after = folders.index(root, validation_fraction=0.2, seed=7)
    now = {path: role for role in ("train", "validation", "test") for path in relative(after.files[role], root)}
    assert len(now) == len(role_of) + 300
    assert {path: now[path] for path in role_of} == role_of
    # The new files spread over the splits by the thresholds: about 20% each held out.
    added = [role for path, role in now.items() if path not in role_of]
    assert 30 < added.count("validation") < 90 and 30 < added.count("test") < 90


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p.mkdir() or p, "is empty"),
        (lambda p: (p / "only").mkdir(parents=True) or (p / "only" / "x.txt").write_text("") or p, "no image files"),
        (lambda p: write_images(p / "only", "circle", 3, np.random.default_rng(0)) and p, "at least two"),
        (lambda p: write_images(p / "test" / "a", "circle", 3, np.random.default_rng(0)) and p, "no train/ folder"),
        (lambda p: (p.mkdir() or p / "f.png").write_bytes(b"x") and p / "f.png", "is a file"),
    ],
    ids=["missing", "empty", "no-images", "one-class", "no-train-split", "a-file"],
)
def test_bad_folders_are_user_errors(tmp_path, make, message):
    path = make(tmp_path / "d")
    with pytest.raises(UserError, match=message):
        data.load(str(path), work_dir=str(tmp_path / "work"))


def test_dataset_value_is_a_folder_or_a_tfds_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").mkdir()
    (tmp_path / "photos").mkdir()
    assert not data.is_folder("mnist") and data.is_folder("./mnist")  # the TFDS name wins unless ./
    assert data.is_folder("photos") and data.is_folder("/no/such/place") and not data.is_folder("fashion_mnist")
    assert data.dataset_name(str(tmp_path / "photos")) == "photos" and data.dataset_name("mnist") == "mnist"


def test_every_class_needs_usable_training_images(tmp_path):
    root = flat_folder(tmp_path / "f", per_class=6)
    for path in (root / "triangle").iterdir():
        path.write_bytes(b"")  # all empty: none decodes
    with pytest.raises(UserError, match="triangle"):
        folders.index(root, validation_fraction=0.2, seed=0)


# --- sizes, channels, pixels --------------------------------------------------------------

def test_default_size_and_channels_rules():
    assert folders.default_size(np.array([[28, 28, 1]] * 3)) == (28, 28)
    assert folders.default_size(np.array([[200, 100, 3], [400, 300, 3], [300, 200, 3]])) == (64, 44)
    assert folders.default_channels(np.array([[9, 9, 1], [9, 9, 2]])) == 1
    assert folders.default_channels(np.array([[9, 9, 1], [9, 9, 3]])) == 3
    assert argtypes.image_size("64x48") == (64, 48) and argtypes.image_size("32") == (32, 32)
    assert argtypes.byte_size("1.5G") == int(1.5 * 2**30) and argtypes.byte_size("0") == 0
    for bad in ("3x3", "wide", "32x"):
        with pytest.raises(argparse.ArgumentTypeError, match="HxW"):
            argtypes.image_size(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="512M"):
        argtypes.byte_size("lots")


def test_load_mixed_sizes_rgb_and_grayscale(tmp_path):
    root = split_folder(tmp_path / "mixed", train=10, test=4, sizes=(16, 60), grayscale_share=0.5)
    ds = data.load(str(root), image_size=(24, 20), work_dir=str(tmp_path / "work"), validation_fraction=0.2)
    assert ds.spec.input_shape == (24, 20, 3) and ds.spec.source["channels_from"].startswith("data")
    images, labels = next(iter(ds.train.batch(100)))
    assert images.dtype == tf.uint8 and images.shape[1:] == (24, 20, 3)
    assert len(labels) == ds.spec.num_examples["train"] == 30 - ds.spec.num_examples["validation"]
    gray = data.load(str(root), image_size=(24, 20), channels=1, work_dir=str(tmp_path / "work"),
                     validation_fraction=0.2)
    assert next(iter(gray.test.batch(4)))[0].shape[1:] == (24, 20, 1)
    assert gray.spec.source["skipped"]["not_images"] == 4  # .DS_Store and notes.txt, twice


def test_grayscale_folder_defaults_to_one_channel(tmp_path):
    rng = np.random.default_rng(0)
    for kind in CLASSES[:2]:
        write_images(tmp_path / "g" / kind, kind, 10, rng, sizes=(28, 28), grayscale_share=1.0)
    ds = data.load(str(tmp_path / "g"), work_dir=str(tmp_path / "work"), validation_fraction=0.2)
    assert ds.spec.input_shape == (28, 28, 1)


def test_prepare_converts_and_resizes_and_keeps_exact_pixels(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    png = tf.io.encode_png(pixels)
    assert np.array_equal(imaging.prepare(png, (30, 20), 3).numpy(), pixels)  # same size: unchanged
    gray = np.asarray(Image.fromarray(pixels).convert("L"))[..., None]
    assert np.abs(imaging.prepare(png, (30, 20), 1).numpy().astype(int) - gray).max() <= 1
    small = imaging.prepare(tf.io.encode_png(gray), (8, 6), 3).numpy()
    assert small.shape == (8, 6, 3) and np.array_equal(small[..., 0], small[..., 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected the bytes of a JPEG, PNG, GIF or BMP"):
        imaging.prepare(tf.constant(b"hello world"), (8, 8), 3)


# --- cache decision -----------------------------------------------------------------------

def test_cache_plan_memory_disk_none(tmp_path):
    assert folders.cache_plan(100, 1000, 10**6, tmp_path / "c").kind == "memory"
    disk = folders.cache_plan(100, 1000, 10**4, tmp_path / "c")
    assert disk.kind == "disk" and Path(disk.directory) == tmp_path / "c"
    free = __import__("shutil").disk_usage(tmp_path).free
    assert folders.cache_plan(free // 10 + 1, 10, 0, tmp_path / "c").kind == "none"


def test_over_budget_dataset_is_cached_on_disk_and_reads_the_same(tmp_path):
    root = flat_folder(tmp_path / "f", per_class=10)
    work = tmp_path / "work"
    ds = data.load(str(root), image_size=(16, 16), cache_budget=1000, work_dir=str(work), validation_fraction=0.2)
    assert ds.cache_plan.kind == "disk" and ds.spec.source["cache"]["kind"] == "disk"
    directory = Path(ds.cache_plan.directory)
    assert directory.is_relative_to(work / "f" / "cache")
    pipe = ds.batched(ds.train, batch_size=8, seed=0, training=False)
    first = np.concatenate([x.numpy() for x, _ in pipe])
    assert list(directory.glob("train*.index"))  # written by the first full pass
    second = np.concatenate([x.numpy() for x, _ in pipe])
    assert np.array_equal(first, second) and len(first) == ds.spec.num_examples["train"]
    # A later run with the same files reads that cache.
    again = data.load(str(root), image_size=(16, 16), cache_budget=1000, work_dir=str(work), validation_fraction=0.2)
    assert again.cache_plan.directory == ds.cache_plan.directory
    pipe = again.batched(again.train, batch_size=8, seed=0, training=False)
    assert np.array_equal(np.concatenate([x.numpy() for x, _ in pipe]), first)
    fits = data.load(str(root), image_size=(16, 16), cache_budget=10**9, work_dir=str(work), validation_fraction=0.2)
    assert fits.cache_plan.kind == "memory"


def test_shuffle_buffer_is_sized_from_the_data():
    small = tf.data.Dataset.from_tensor_slices(np.zeros((500, 8, 8, 3), np.uint8))
    assert data.shuffle_buffer_for(small) == 500
    big = tf.data.Dataset.from_tensor_slices(np.zeros((10, 1024, 1024, 3), np.uint8)).repeat(10_000)
    assert data.shuffle_buffer_for(big) == max(256, data.SHUFFLE_BUFFER_BYTES // (1024 * 1024 * 3))
    assert data.shuffle_buffer_for(small, max_bytes=192 * 300) == 300


# --- models on other sizes ----------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(models.FAMILIES))
def test_families_build_on_colour_64x64(family):
    model = models.build(family, (64, 64, 3), 5)
    assert model(np.zeros((2, 64, 64, 3), np.uint8)).shape == (2, 5)


def test_cnn_downsamples_and_transformer_patches_follow_the_input():
    from tfpipeline.models import cnn, transformer

    assert cnn.block_filters((28, 28, 1), cnn.Hyperparams()) == (16, 32)  # MNIST: the two blocks it names
    assert cnn.block_filters((64, 64, 3), cnn.Hyperparams()) == (16, 32, 64)
    assert [transformer.auto_patch_size(s, s) for s in (28, 32, 64)] == [4, 4, 8]
    assert [transformer.auto_patch_size(s, s, grid=4) for s in (28, 32, 64)] == [7, 8, 16]
    with pytest.raises(ValueError, match="patch size"):
        transformer.auto_patch_size(31, 31)
    # The convolutional stem halves the image per factor 2 of the patch size, then takes the
    # odd remainder in one step: the same token grid as a patchify of that size.
    assert [transformer.stem_strides(p) for p in (4, 8, 7, 12, 1)] == [[2, 2], [2, 2, 2], [7], [2, 2, 3], []]
    for shape, tokens in (((28, 28, 1), 49), ((32, 32, 3), 64), ((64, 64, 3), 64), ((64, 48, 3), 48)):
        model = transformer.build(shape, 3)
        assert model.get_layer("patches").output.shape == (None, tokens, transformer.Hyperparams().embed_dim)


# --- serving_bytes -------------------------------------------------------------------------

def test_serving_bytes_on_raw_files_matches_the_tf_data_pixels(tmp_path):
    root = split_folder(tmp_path / "s", train=6, test=5, sizes=(18, 50))
    ds = data.load(str(root), image_size=(24, 24), work_dir=str(tmp_path / "work"), validation_fraction=0.2)
    model = models.build("cnn", ds.spec.input_shape, ds.spec.num_classes)
    path = tmp_path / "export"
    export.write_savedmodel(model, ds.spec.input, path)
    loaded = tf.saved_model.load(str(path))
    idx = folders.index(root, validation_fraction=0.2, seed=42)
    raw = [Path(p).read_bytes() for p in idx.files["test"]]
    by_bytes = loaded.signatures["serving_bytes"](image_bytes=tf.constant(raw))
    pixels = np.stack([x.numpy() for x, _ in ds.test])
    by_pixels = loaded.signatures["serving_default"](images=tf.constant(pixels))
    assert np.array_equal(by_bytes["classes"].numpy(), by_pixels["classes"].numpy())
    np.testing.assert_allclose(by_bytes["probabilities"].numpy(), by_pixels["probabilities"].numpy(), atol=1e-6)
    image_input.check_bytes_signature(tf.saved_model.load(str(path)), pixels[:4])
    truncated = raw[0][: len(raw[0]) // 3] if raw[0][:2] == b"\xff\xd8" else raw[1][: len(raw[1]) // 3]
    for bad in (b"", b"notes", truncated):
        with pytest.raises(tf.errors.InvalidArgumentError):
            loaded.signatures["serving_bytes"](image_bytes=tf.constant([raw[0], bad]))
    # The same signature still answers after a bad request.
    assert loaded.signatures["serving_bytes"](image_bytes=tf.constant(raw[:1]))["classes"].shape == (1,)


# --- end to end ---------------------------------------------------------------------------

def run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_images_pipeline_trains_exports_and_predicts_from_files(tmp_path):
    root = split_folder(tmp_path / "shapes", train=40, test=10, sizes=(20, 56))
    broken = add_broken(root / "train" / "circle", np.random.default_rng(2))
    out = run_module("pipelines.images", "--dataset", str(root), "--no-tune", "--epochs", "6",
                     "--batch-size", "16", "--image-size", "32x32", "--histogram-freq", "0", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Skipped 6 files" in out.stdout and "train/circle/truncated.jpg" in out.stdout
    version = tmp_path / "exported" / "shapes" / "1"
    metadata = json.loads((version / "metadata.json").read_text())
    source = metadata["dataset"]["source"]
    assert source["kind"] == "folder" and metadata["dataset"]["class_names"] == list(CLASSES)
    assert source["skipped"] == {"count": 6, "not_images": 4, "undecodable": 2,
                                 "files": source["skipped"]["files"]}
    assert {"train/circle/empty.jpg", "train/circle/truncated.jpg"} <= set(source["skipped"]["files"])
    assert metadata["dataset"]["input_shape"] == [32, 32, 3] and source["split"]["layout"] == "split"
    assert set(metadata["export"]["signatures"]) == {"serving_default", "serving_bytes"}
    assert metadata["metrics"]["test"]["accuracy"] > 0.6  # shapes are easy; 6 epochs of 7 steps
    # predict sends the raw files to serving_bytes: its classes are the in-process model's.
    files = sorted((root / "test" / "square").iterdir())[:4] + sorted((root / "test" / "circle").iterdir())[:4]
    out = run_module("tfpipeline.predict", *map(str, files), "--model-dir", str(version.parent), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = tf.saved_model.load(str(version))
    expected = loaded.signatures["serving_bytes"](image_bytes=tf.constant([f.read_bytes() for f in files]))
    printed = [int(line.split("class ")[1].split()[0]) for line in out.stdout.strip().splitlines()]
    assert printed == expected["classes"].numpy().tolist()
    out = run_module("tfpipeline.predict", str(broken[1]), "--model-dir", str(version.parent), cwd=tmp_path)
    stderr = " ".join(out.stderr.split())  # one wrapped paragraph
    assert out.returncode == 2 and "is empty (0 bytes)" in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_images_pipeline_flat_layout_and_empty_folder(tmp_path):
    root = flat_folder(tmp_path / "flat", per_class=25)
    out = run_module("pipelines.images", "--dataset", str(root), "--no-tune", "--epochs", "1", "--model", "mlp",
                     "--histogram-freq", "0", "--seed", "5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    metadata = json.loads((tmp_path / "exported" / "flat" / "1" / "metadata.json").read_text())
    held = metadata["dataset"]["source"]["split"]["held_out"]
    assert held["test"]["seed"] == 5 and held["validation"]["fraction"] == 0.1
    assert sum(metadata["dataset"]["num_examples"].values()) == 75
    (tmp_path / "nothing").mkdir()
    out = run_module("pipelines.images", "--dataset", str(tmp_path / "nothing"), "--no-tune", cwd=tmp_path)
    assert out.returncode == 2 and "is empty" in " ".join(out.stderr.split()) and "Traceback" not in out.stderr


@pytest.mark.parametrize("family", sorted(models.FAMILIES))
def test_search_spaces_follow_the_input_size(family):
    import keras_tuner as kt

    module = models.family(family)
    for shape in ((28, 28, 1), (40, 40, 3), (64, 48, 3)):
        hp = kt.HyperParameters()
        chosen = module.search_space(hp, shape)
        model = module.build(shape, 4, chosen)  # the first trial (the defaults) builds at this size
        assert model(np.zeros((1, *shape), np.uint8)).shape == (1, 4)
        if family == "transformer":  # every patch size offered divides the input
            for patch in hp.space[[p.name for p in hp.space].index("patch_size")].values:
                assert shape[0] % patch == 0 and shape[1] % patch == 0


def test_decode_into_memory_reads_the_files_once(tmp_path):
    """After `decode_into_memory`, every split is served from memory: the same examples in the
    same seeded order as decoding on the fly, even once the files are gone."""
    root = flat_folder(tmp_path / "shapes", per_class=12)
    datasets = data.load(str(root), image_size=(16, 16), work_dir=tmp_path / "work")
    on_the_fly = {role: list(datasets.batched(getattr(datasets, role), batch_size=8, seed=3, training=role == "train"))
                  for role in ("train", "validation", "test")}
    in_memory = datasets.decode_into_memory(verbose=0)
    assert in_memory.in_memory and not datasets.in_memory
    for path in root.rglob("*"):
        if path.is_file():
            path.unlink()
    for role, expected in on_the_fly.items():
        got = list(in_memory.batched(getattr(in_memory, role), batch_size=8, seed=3, training=role == "train"))
        assert len(got) == len(expected), role
        for (x, y), (ex, ey) in zip(got, expected):
            np.testing.assert_array_equal(x.numpy(), ex.numpy())
            np.testing.assert_array_equal(y.numpy(), ey.numpy())
    # A search trial's share and the final fit's train + validation also read memory.
    share = in_memory.batched(in_memory.train.take(10), batch_size=8, seed=3, training=True)
    assert sum(int(x.shape[0]) for x, _ in share) == 10
    both = in_memory.train.concatenate(in_memory.validation)
    assert sum(1 for _ in both) == in_memory.spec.num_examples["train"] + in_memory.spec.num_examples["validation"]


def test_decode_into_memory_leaves_a_disk_cached_dataset_alone(tmp_path):
    root = flat_folder(tmp_path / "shapes", per_class=15)
    datasets = data.load(str(root), image_size=(16, 16), cache_budget=1, work_dir=tmp_path / "work")
    assert datasets.cache_plan.kind == "disk"
    assert datasets.decode_into_memory(verbose=0) is datasets
