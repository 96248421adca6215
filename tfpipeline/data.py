"""Input pipelines: a TFDS image-classification dataset → batched `tf.data` pipelines.

TFDS does the downloading, checksum checking and parsing of the published files; this
module only decides which slices to read and how to feed them to Keras quickly:

    encoded examples --parallel decode--> cache --seeded shuffle--> batch --> prefetch

Everything about the data (input shape, number of classes, class names) comes from the
dataset's `DatasetInfo`, so any TFDS dataset with an `image` and a `label` feature runs
through the same code.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

from tfpipeline.errors import UserError

#: Environment variable naming the folder of manually downloaded files (the `--manual-dir` flag).
ENV_MANUAL_DIR = "TFPIPELINE_MANUAL_DIR"
#: TFDS's own variable for where prepared datasets live (the `--data-dir` flag).
ENV_DATA_DIR = "TFDS_DATA_DIR"

# Quick mode trains on this many examples: enough for a smoke test to exercise every stage
# (several batches, a real validation pass) in seconds. It still evaluates on the whole test
# split (a few seconds), so its figures compare with any other evaluation of that split.
QUICK_EXAMPLES = {"train": 3000, "validation": 1000}
# Examples the training shuffle draws from: all of MNIST's training split, so each epoch is a
# full reshuffle of it.
SHUFFLE_BUFFER = 60_000


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a model and an export need to know about a dataset."""

    name: str
    version: str
    input_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    splits: dict[str, str]  # role ("train", "validation", "test") -> TFDS split string
    num_examples: dict[str, int]  # role -> number of examples read

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Datasets:
    """Unbatched `(uint8 image, int label)` datasets for each role, plus their spec."""

    spec: DatasetSpec
    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset


def resolve_manual_dir(manual_dir: str | os.PathLike | None) -> Path | None:
    """The flag wins over the environment variable; an empty value means "not given"."""
    value = manual_dir or os.environ.get(ENV_MANUAL_DIR) or None
    return Path(value).expanduser().resolve() if value else None


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str | None:
    value = data_dir or os.environ.get(ENV_DATA_DIR) or None
    return str(Path(value).expanduser().resolve()) if value else None


def get_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as exc:
        raise UserError(
            f"Unknown dataset {name!r}: TFDS has no dataset by that name. Pass an image "
            "classification dataset from the TFDS catalog with `image` and `label` features, "
            "for example --dataset mnist or --dataset fashion_mnist."
        ) from exc


def _check_features(builder: tfds.core.DatasetBuilder) -> None:
    features = builder.info.features
    image = features["image"] if "image" in features else None
    label = features["label"] if "label" in features else None
    if not isinstance(image, tfds.features.Image) or not isinstance(label, tfds.features.ClassLabel):
        raise UserError(
            f"Dataset {builder.name!r} is not an image classification dataset this pipeline can "
            "read: it needs an `image` Image feature and a `label` ClassLabel feature "
            f"(it has: {', '.join(features.keys())}). Choose another --dataset."
        )
    if None in image.shape:
        raise UserError(
            f"Dataset {builder.name!r} has images of varying size {image.shape}; this pipeline "
            "needs a fixed image shape. Choose another --dataset."
        )


def _check_manual_dir(builder: tfds.core.DatasetBuilder, manual_dir: Path) -> None:
    """Fail early, naming the files, instead of letting TFDS try to download them."""
    expected = sorted({info.filename for info in (builder.url_infos or {}).values() if info.filename})
    if not manual_dir.is_dir():
        listing = "".join(f"\n  {name}" for name in expected)
        raise UserError(
            f"The manual data directory {manual_dir} does not exist. Create it and put the "
            f"published files of {builder.name!r} in it{':' + listing if listing else ''}\n"
            f"then pass it with --manual-dir or {ENV_MANUAL_DIR}."
        )
    missing = [name for name in expected if not (manual_dir / name).is_file()]
    if missing:
        listing = "".join(f"\n  {name}" for name in missing)
        raise UserError(
            f"The manual data directory {manual_dir} lacks {len(missing)} of the "
            f"{len(expected)} published files of {builder.name!r}:{listing}\n"
            f"Put them (exactly as published, still compressed) in {manual_dir}, or drop "
            f"--manual-dir / {ENV_MANUAL_DIR} to let TFDS download them."
        )


def prepare(name: str, data_dir: str | None = None, manual_dir: str | os.PathLike | None = None):
    """Return a TFDS builder whose data is prepared, preparing it (once) if needed."""
    builder = get_builder(name, resolve_data_dir(data_dir))
    _check_features(builder)
    if builder.is_prepared():
        return builder
    manual = resolve_manual_dir(manual_dir)
    if manual is not None:
        _check_manual_dir(builder, manual)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual) if manual else None)
        )
    except NonMatchingChecksumError as exc:
        raise UserError(
            f"A data file of {name!r} does not match its published checksum, so it is corrupt or "
            f"a different file: {exc}. Replace it with the published file "
            f"(in {manual or 'the TFDS download directory'}) and run again."
        ) from exc
    except (OSError, tfds.download.DownloadError) as exc:  # network, permissions
        raise UserError(
            f"Could not download or prepare {name!r}: {exc}. Without internet, put the dataset's "
            f"published files in a folder and pass it with --manual-dir or {ENV_MANUAL_DIR}."
        ) from exc
    return builder


def split_strings(num_train: int, validation_fraction: float, quick: bool = False) -> dict[str, str]:
    """TFDS split strings for each role: validation is the last fraction of TFDS `train`.

    The test split is never used for training or model selection; it is read once, for the
    final evaluation.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise UserError(
            f"--validation-fraction must be between 0 and 1 (exclusive), got {validation_fraction}."
        )
    boundary = num_train - round(num_train * validation_fraction)
    if boundary <= 0 or boundary >= num_train:
        raise UserError(
            f"--validation-fraction {validation_fraction} leaves no training or no validation "
            f"examples out of {num_train}; choose a value such as 0.1."
        )
    if quick:
        n_train = min(QUICK_EXAMPLES["train"], boundary)
        n_val = min(QUICK_EXAMPLES["validation"], num_train - boundary)
        return {
            "train": f"train[:{n_train}]",
            "validation": f"train[{boundary}:{boundary + n_val}]",
            "test": "test",
        }
    return {"train": f"train[:{boundary}]", "validation": f"train[{boundary}:]", "test": "test"}


def load(
    name: str = "mnist",
    *,
    data_dir: str | None = None,
    manual_dir: str | os.PathLike | None = None,
    validation_fraction: float = 0.1,
    quick: bool = False,
) -> Datasets:
    """Prepare `name` with TFDS and return its train / validation / test datasets."""
    builder = prepare(name, data_dir, manual_dir)
    info = builder.info
    if "train" not in info.splits or "test" not in info.splits:
        raise UserError(
            f"Dataset {name!r} needs a `train` and a `test` split; it has "
            f"{', '.join(info.splits.keys())}. Choose another --dataset."
        )
    splits = split_strings(info.splits["train"].num_examples, validation_fraction, quick)
    image_feature = info.features["image"]
    label_feature = info.features["label"]

    def read(split: str) -> tf.data.Dataset:
        # Read encoded images and decode them ourselves in a parallel map (below): TFDS
        # would otherwise decode inside its sequential reader.
        return builder.as_dataset(
            split=split,
            shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )

    def decode(example):
        image = image_feature.decode_example(example["image"])
        image.set_shape(image_feature.shape)
        return image, tf.cast(example["label"], tf.int32)

    datasets = {
        role: read(split).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        for role, split in splits.items()
    }
    spec = DatasetSpec(
        name=name,
        version=str(info.version),
        input_shape=tuple(int(d) for d in image_feature.shape),
        num_classes=label_feature.num_classes,
        class_names=tuple(label_feature.names),
        splits=splits,
        num_examples={role: int(info.splits[split].num_examples) for role, split in splits.items()},
    )
    return Datasets(spec, datasets["train"], datasets["validation"], datasets["test"])


def make_pipeline(dataset: tf.data.Dataset, *, batch_size: int, training: bool, seed: int) -> tf.data.Dataset:
    """Batch an unbatched `(image, label)` dataset for training or evaluation.

    Cache after decoding (decoded MNIST is 47 MB; each epoch after the first then reads
    memory), shuffle with a fixed seed but a new order every epoch, batch, and prefetch so
    the next batch is ready when the model asks for it. The order is always deterministic
    (cheap here); `--deterministic` adds op determinism on top.
    """
    dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    # The cached source is not file-based, so a multi-worker strategy must shard by data.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def batched(batch_size: int, seed: int):
    """`make_pipeline` with the batch size and seed fixed: `f(dataset, training)`."""
    return lambda dataset, training: make_pipeline(dataset, batch_size=batch_size, training=training, seed=seed)
