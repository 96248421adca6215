"""Input pipelines: a TFDS image-classification dataset or a folder of images → batched
`tf.data` pipelines.

`load(name_or_path)` takes a TFDS catalog name or an existing folder (class-per-folder images,
read by `tfpipeline.data.folders`); everything after that is the same for both.

TFDS does the downloading, checksum checking and parsing of the published files; this
module only decides which slices to read and how to feed them to Keras quickly:

    encoded examples --parallel decode--> cache --seeded shuffle--> batch --> prefetch

Everything about the data (input shape, number of classes, class names) comes from the
dataset's `DatasetInfo`, so any TFDS dataset with an `image` and a `label` feature runs
through the same code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

from tfpipeline.data import ENV_DATA_DIR, ENV_MANUAL_DIR, folders, imaging, paths
from tfpipeline.errors import UserError
from tfpipeline.inputs import InputSpec
from tfpipeline.inputs import image as image_input  # the module, not its class: it imports data.imaging

# Quick mode trains on this many examples: enough for a smoke test to exercise every stage
# (several batches, a real validation pass) in seconds. It still evaluates on the whole test
# split (a few seconds), so its figures compare with any other evaluation of that split.
QUICK_EXAMPLES = {"train": 3000, "validation": 1000}

# The training shuffle buffer holds at most this many bytes of decoded examples (all of a
# small dataset, such as MNIST's 54,000 training images; 5,000 64x64 RGB ones), and at most a
# quarter of the cache budget (`Datasets.batched`).
SHUFFLE_BUFFER_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a model and an export need to know about a dataset."""

    name: str
    version: str
    input_shape: tuple[int, int, int]
    # What every stage after the data asks about the input (signatures, predict, reports);
    # metadata.json records it as dataset.input, beside input_shape.
    input: InputSpec
    num_classes: int
    class_names: tuple[str, ...]
    splits: dict[str, str]  # role ("train", "validation", "test") -> TFDS split string or folder
    num_examples: dict[str, int]  # role -> number of examples read
    # Where the examples came from and how they were prepared: "kind" ("tfds" or "folder"), the
    # cache decision and, for a folder, its layout, split rule and skipped files.
    source: dict = dataclasses.field(default_factory=dict)
    # Which data this is and which test examples it holds (`split_identity`): the promotion gate
    # compares a new version only with versions of the same dataset, on examples neither trained on.
    identity: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        record = dataclasses.asdict(dataclasses.replace(self, input=None))
        record["input"] = self.input.to_json()  # with its kind, for inputs.from_json
        return record


@dataclasses.dataclass
class Datasets:
    """Unbatched `(uint8 image, int label)` datasets for each role, plus their spec."""

    spec: DatasetSpec
    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    # Where decoded examples are kept between epochs (None: in memory, make_pipeline's default).
    # "disk": `load` already cached each split in a file; "none": not cached.
    cache_plan: folders.CachePlan | None = None
    # A folder dataset's training files and labels, in the order `train` reads them (None for
    # TFDS): multi-worker training gives each worker its own share of them (tfpipeline.distribute.sharding).
    train_files: tuple[list[str], list[int]] | None = None
    # True once `decode_into_memory` has filled each split's memory cache.
    in_memory: bool = False
    # A folder dataset's `file_key` of each file, by role, in the order each split reads them
    # (None for TFDS, whose test split is never a training split): which test images a
    # published version trained on, for the promotion gate.
    file_keys: dict[str, list[str]] | None = None

    def batched(self, dataset: tf.data.Dataset, *, batch_size: int, seed: int, training: bool,
                own_splits: bool = True, **epochs) -> tf.data.Dataset:
        """`batched(dataset, ...)` for these datasets: in-memory cache only when the cache plan
        says so (and the split is not in memory already), and a shuffle buffer of at most a
        quarter of the cache budget. `own_splits=False` for a dataset made from these, such as a
        worker's share of the files (`tfpipeline.distribute.sharding`): it is cached as the plan says."""
        plan = self.cache_plan
        memory = plan is None or plan.kind == "memory"
        budget = plan.budget_bytes if plan else 4 * SHUFFLE_BUFFER_BYTES
        cache = memory and not (own_splits and self.in_memory)
        return batched(dataset, batch_size=batch_size, seed=seed, training=training, cache=cache,
                       shuffle_buffer_bytes=min(SHUFFLE_BUFFER_BYTES, budget // 4), **epochs)

    def decode_into_memory(self, verbose: int = 1) -> Datasets:
        """These datasets with every split decoded now, once, into its memory cache, when the
        cache plan keeps them in memory (else unchanged).

        Without it the first epoch decodes as it trains: the two cores then share decoding
        with the first training steps, and each search trial, which builds its own pipeline,
        decodes its share of the training split again. Read from memory, the first epoch
        trains at the speed of the others, as a model given NumPy arrays does.
        """
        if self.in_memory or (self.cache_plan is not None and self.cache_plan.kind != "memory"):
            return self
        total = sum(self.spec.num_examples.values())
        if verbose:
            print(f"Decoding the {total:,} images of {self.spec.name} into memory "
                  f"({total * _example_bytes(self.spec.input_shape) / 2**20:,.1f} MiB)...", flush=True)
        # A bar redrawn in place on a terminal; one line at the end in a log file.
        progress = keras.utils.Progbar(total, verbose=0 if not verbose else 1 if sys.stdout.isatty() else 2,
                                       unit_name="image")
        splits = {}
        for role in ("train", "validation", "test"):
            splits[role] = getattr(self, role).cache()
            # One full pass completes the cache; every later iterator of `splits[role]`,
            # and of datasets made from it (`take`, `concatenate`), reads memory. With the
            # training pipelines' options: its iterator is deleted when the pass ends.
            for images, _ in _with_options(splits[role].batch(1024)).prefetch(tf.data.AUTOTUNE):
                progress.add(int(images.shape[0]))
        return dataclasses.replace(self, **splits, in_memory=True)


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


def _check_features(builder: tfds.core.DatasetBuilder, image_size=None) -> None:
    features = builder.info.features
    image = features["image"] if "image" in features else None
    label = features["label"] if "label" in features else None
    if not isinstance(image, tfds.features.Image) or not isinstance(label, tfds.features.ClassLabel):
        raise UserError(
            f"Dataset {builder.name!r} is not an image classification dataset this pipeline can "
            "read: it needs an `image` Image feature and a `label` ClassLabel feature "
            f"(it has: {', '.join(features.keys())}). Choose another --dataset."
        )
    if None in image.shape[:2] and image_size is None:
        raise UserError(
            f"Dataset {builder.name!r} has images of varying size {image.shape}; pass --image-size "
            "HxW (for example 64x64) to resize them all to one input size."
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


def prepare(name: str, data_dir: str | None = None, manual_dir: str | os.PathLike | None = None,
            image_size: tuple[int, int] | None = None):
    """Return a TFDS builder whose data is prepared, preparing it (once) if needed."""
    builder = get_builder(name, resolve_data_dir(data_dir))
    _check_features(builder, image_size)
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


def is_folder(name: str) -> bool:
    """Whether `--dataset name` means a folder: a value that starts like a path (`/`, `.`, `~`:
    no TFDS name does), or an existing path that is not also a TFDS name (`./mnist` is the
    folder when a folder `mnist` is beside the TFDS dataset of that name)."""
    if paths.starts_like_a_path(name):
        return True
    if not Path(name).exists():
        return False
    try:
        tfds.builder_cls(name.split(":")[0].split("/")[0])
    except (tfds.core.registered.DatasetNotFoundError, ValueError):  # ValueError: not even a TFDS name's form
        return True
    return False


def dataset_name(name: str) -> str:
    """The name exports, logs and checkpoints are filed under: a folder's base name (a file's,
    such as a CSV, without its suffix), else the TFDS name."""
    if not is_folder(name):
        return name
    path = Path(name).expanduser().resolve()
    return path.stem if path.is_file() else path.name


def _example_bytes(shape) -> int:
    return int(np.prod(shape)) + 4  # uint8 pixels and an int32 label


def load(
    name: str = "mnist",
    *,
    data_dir: str | None = None,
    manual_dir: str | os.PathLike | None = None,
    validation_fraction: float = 0.1,
    quick: bool = False,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    cache_budget: int | None = None,
    work_dir: str | os.PathLike = "work",
    seed: int = 42,
    scanner=None,
) -> Datasets:
    """Train / validation / test datasets of a TFDS dataset or of a folder of images.

    Args:
        name: a TFDS catalog name (prepared with TFDS, once) or a folder path (see
            `tfpipeline.data.folders` for the layouts).
        data_dir, manual_dir: TFDS's data folder and its folder of downloaded files.
        validation_fraction: share of the training data held out for validation.
        quick: read a small subset of train and validation (a smoke test).
        image_size: (height, width) of the model's input; None: the dataset's own (a folder:
            `folders.default_size`).
        channels: 1 or 3; None: the dataset's own (a folder: `folders.default_channels`).
        cache_budget: bytes of decoded examples that may be cached in memory; more goes to
            disk under `work_dir`, or is not cached. None: `folders.default_cache_budget()`.
        work_dir: the disk cache goes under `<work_dir>/<dataset name>/cache/`.
        seed: fixes which files of a folder go to which split.
        scanner: for a folder, what checks its files (`folders.index`); None: this process alone.

    Returns:
        `Datasets`: the unbatched splits, their `DatasetSpec` and the cache plan.

    Raises:
        UserError: the dataset cannot be found, prepared or read (the message names it and the fix).
    """
    if channels not in (None, 1, 3):
        raise UserError(f"--channels must be 1 or 3, got {channels}.")
    budget = folders.default_cache_budget() if cache_budget is None else int(cache_budget)
    if is_folder(name):
        datasets = _load_folder(name, validation_fraction, quick, image_size=image_size, channels=channels, seed=seed,
                                scanner=scanner)
    else:
        datasets = _load_tfds(name, data_dir, manual_dir, validation_fraction, quick, image_size=image_size,
                              channels=channels)
    spec = datasets.spec
    key = hashlib.sha256(json.dumps([spec.to_json(), name], sort_keys=True, default=str).encode()).hexdigest()[:16]
    plan = folders.cache_plan(sum(spec.num_examples.values()), _example_bytes(spec.input_shape), budget,
                              Path(work_dir) / dataset_name(name) / "cache" / key)
    if plan.kind != "memory":
        print(f"The decoded dataset ({plan.prepared_bytes / 2**20:,.1f} MiB) exceeds --cache-budget "
              f"({plan.budget_bytes / 2**20:,.1f} MiB): " + (f"caching it on disk in {plan.directory}."
              if plan.kind == "disk" else "not caching it (not enough free disk either); each epoch decodes again."),
              flush=True)
    spec = dataclasses.replace(spec, source={**spec.source, "cache": plan.to_json()})
    roles = {"train": datasets.train, "validation": datasets.validation, "test": datasets.test}
    if plan.kind == "disk":  # each split's decoded examples in a file (TF writes it on the first full pass)
        roles = {role: ds.cache(str(Path(plan.directory) / role)) for role, ds in roles.items()}
    return dataclasses.replace(datasets, spec=spec, **roles, cache_plan=plan)


def _load_tfds(name, data_dir, manual_dir, validation_fraction, quick, *, image_size, channels) -> Datasets:
    builder = prepare(name, data_dir, manual_dir, image_size)
    info = builder.info
    if "train" not in info.splits or "test" not in info.splits:
        raise UserError(
            f"Dataset {name!r} needs a `train` and a `test` split; it has "
            f"{', '.join(info.splits.keys())}. Choose another --dataset."
        )
    splits = split_strings(info.splits["train"].num_examples, validation_fraction, quick)
    image_feature = info.features["image"]
    label_feature = info.features["label"]
    own_channels = image_feature.shape[-1]
    size = tuple(image_size or image_feature.shape[:2])
    out_channels = channels or own_channels
    convert = image_size is not None or out_channels != own_channels

    def read(split: str) -> tf.data.Dataset:
        # Read encoded images and decode them ourselves in a parallel map (below): TFDS
        # would otherwise decode inside its sequential reader.
        return builder.as_dataset(
            split=split,
            shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()},
        )

    def decode(example):
        if convert:  # the serving_bytes signature's own decode and resize
            image = imaging.prepare(example["image"], size, out_channels)
        else:
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
        input_shape=(int(size[0]), int(size[1]), int(out_channels)),
        input=image_input.ImageInput(int(size[0]), int(size[1]), int(out_channels)),
        num_classes=label_feature.num_classes,
        class_names=tuple(label_feature.names),
        splits=splits,
        num_examples={role: int(info.splits[split].num_examples) for role, split in splits.items()},
        source={"kind": "tfds"},
    )
    spec = dataclasses.replace(spec, identity=split_identity(spec.to_json()))
    return Datasets(spec, datasets["train"], datasets["validation"], datasets["test"])


def _load_folder(path, validation_fraction, quick, *, image_size, channels, seed, scanner=None) -> Datasets:
    idx = folders.index(path, validation_fraction=validation_fraction, seed=seed, scanner=scanner)
    folders.report_skipped(idx.skipped, idx.root)
    files, labels = dict(idx.files), dict(idx.labels)
    if quick:
        for role, limit in QUICK_EXAMPLES.items():
            files[role], labels[role] = files[role][:limit], labels[role][:limit]
    train_shapes = idx.shapes["train"]
    size = tuple(image_size) if image_size else folders.default_size(train_shapes)
    out_channels = channels or folders.default_channels(train_shapes)
    print(f"Folder dataset {idx.root} ({idx.layout} layout): {len(idx.class_names)} classes, "
          + ", ".join(f"{len(files[r]):,} {r}" for r in ("train", "validation", "test"))
          + f" images; input {size[0]}x{size[1]}x{out_channels}"
          + ("" if image_size and channels else " (" + ", ".join(
              w for w, given in (("size", image_size), ("channels", channels)) if not given) + " from the data)"),
          flush=True)
    digest = hashlib.sha256()
    for role in ("train", "validation", "test"):
        for f, lab in zip(files[role], labels[role]):
            digest.update(f"{role}:{Path(f).relative_to(idx.root).as_posix()}:{lab}\n".encode())
    spec = DatasetSpec(
        name=idx.root.name,
        version=f"files-{digest.hexdigest()[:12]}",  # changes when the files or the split change
        input_shape=(int(size[0]), int(size[1]), int(out_channels)),
        input=image_input.ImageInput(int(size[0]), int(size[1]), int(out_channels)),
        num_classes=len(idx.class_names),
        class_names=idx.class_names,
        splits=idx.split_rule["splits"],
        num_examples={role: len(files[role]) for role in ("train", "validation", "test")},
        source={
            "kind": "folder",
            "path": str(idx.root),
            "split": idx.split_rule,
            "image_size": list(size),
            "image_size_from": "--image-size" if image_size else "data (folders.default_size)",
            "channels": int(out_channels),
            "channels_from": "--channels" if channels else "data (folders.default_channels)",
            "skipped": {
                "count": len(idx.skipped),
                "not_images": sum(1 for _, why in idx.skipped if why.startswith("not an image")),
                "undecodable": sum(1 for _, why in idx.skipped if not why.startswith("not an image")),
                "files": [Path(p).relative_to(idx.root).as_posix() for p, _ in idx.skipped[:folders.SHOW_SKIPPED]],
            },
        },
        identity={"dataset": f"folder:{idx.root}",
                  "test_digest": _test_files_digest(idx.root, files["test"], labels["test"])},
    )
    made = {role: folders.dataset(files[role], labels[role], size, out_channels) for role in files}
    keys = {role: [file_key(Path(f).relative_to(idx.root).as_posix()) for f in files[role]] for role in files}
    return Datasets(spec, made["train"], made["validation"], made["test"],
                    train_files=(files["train"], labels["train"]), file_keys=keys)


def file_key(relative: str) -> str:
    """A folder file's key in a version's record of what it trained on: its path in the folder."""
    return hashlib.sha256(relative.encode()).hexdigest()[:16]


def _test_files_digest(root: Path, files: list[str], labels: list[int]) -> str:
    """Which test images these are: each file's path, label and content hash. Another digest
    means other test images (files added, removed or edited, or another split)."""
    digest = hashlib.sha256()
    for path, label in sorted(zip((Path(f).relative_to(root).as_posix() for f in files), labels)):
        content = hashlib.sha256(Path(root, path).read_bytes()).hexdigest()
        digest.update(f"{path}:{label}:{content}\n".encode())
    return digest.hexdigest()


def split_identity(dataset: dict) -> dict:
    """The `identity` of a dataset as metadata.json's "dataset" records it: its own record when
    it has one, else what the record implies (a TFDS dataset's name, version and test split
    string; a folder's path, with its test images unknown: such versions did not record them).

    Returns:
        {"dataset": which data ("tfds:NAME", "folder:PATH", "KIND:NAME"), "test_digest": which
        test examples (None: unknown)}.
    """
    if dataset.get("identity"):
        return dataset["identity"]
    source = dataset.get("source") or {}
    kind = source.get("kind", "tfds")
    if kind == "folder":
        return {"dataset": f"folder:{source.get('path')}", "test_digest": None}
    test = (dataset.get("splits") or {}).get("test")
    text = f"{kind}:{dataset.get('name')}:{dataset.get('version')}:{test}"
    return {"dataset": f"{kind}:{dataset.get('name')}", "test_digest": hashlib.sha256(text.encode()).hexdigest()}


def shuffle_buffer_for(dataset: tf.data.Dataset, max_bytes: int = SHUFFLE_BUFFER_BYTES) -> int:
    """All of the dataset when `max_bytes` holds it, else as many examples as fit (at least 256)."""
    example = sum(int(np.prod(s.shape)) * s.dtype.size for s in tf.nest.flatten(dataset.element_spec)
                  if s.shape.is_fully_defined())
    fit = max(256, max_bytes // max(1, example))
    count = int(dataset.cardinality())
    return min(fit, count) if count > 0 else fit


def make_pipeline(
    dataset: tf.data.Dataset,
    *,
    batch_size: int,
    training: bool,
    seed: int,
    cache: bool = True,
    shuffle_buffer_bytes: int = SHUFFLE_BUFFER_BYTES,
    first_epoch: int | None = None,
    end_epoch: int | None = None,
    per_batch=None,
) -> tf.data.Dataset:
    """Batch an unbatched `(image, label)` dataset for training or evaluation.

    Cache after decoding in memory (decoded MNIST is 47 MB; each epoch after the first then
    reads memory) unless `cache` is False (`Datasets.batched` says: a dataset over the cache
    budget is cached on disk by `load` already, or not at all), shuffle with a fixed seed but
    a new order every epoch, from a buffer sized from the data (`shuffle_buffer_for`, at most
    `shuffle_buffer_bytes`), batch, and prefetch so the next batch is ready when the model asks
    for it. The order is always deterministic (cheap here); `--deterministic` adds op
    determinism on top.

    With `first_epoch` (training only), the result is endless: epoch `first_epoch`, then the
    next up to `end_epoch` (exclusive), each shuffled with `epoch_seed(seed, epoch)`, so an
    epoch's order depends on the seed and its number alone, not on how many epochs this
    iterator ran before (a resumed run, a search trial after other trials).
    `per_batch(images, labels, epoch, step)` then runs on each batch, one at a time, knowing
    where it is (the training augmentation).
    """
    if cache:
        dataset = dataset.cache()
    if training and first_epoch is not None:
        return _epochs(dataset, batch_size=batch_size, seed=seed, first_epoch=first_epoch, end_epoch=end_epoch,
                       per_batch=per_batch, buffer=shuffle_buffer_for(dataset, shuffle_buffer_bytes))
    if training:
        buffer = shuffle_buffer_for(dataset, shuffle_buffer_bytes)
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _with_options(dataset).prefetch(tf.data.AUTOTUNE)


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: a function of the run's seed and the epoch's number only."""
    return seed * 1_000_003 + epoch


def _epochs(dataset: tf.data.Dataset, *, batch_size: int, seed: int, first_epoch: int, end_epoch: int | None,
            per_batch, buffer: int) -> tf.data.Dataset:
    """`make_pipeline`'s endless training stream, epoch by epoch from `first_epoch`.

    Each epoch is its own dataset with a Python-int seed, concatenated in order up to
    `end_epoch` (then the whole repeats, for a loop that runs on, such as a divergence retry):
    a seed computed from the epoch inside the pipeline would be a tensor, which TF's seed
    handling refuses when the global seed is 0.
    """
    def one_epoch(epoch: int) -> tf.data.Dataset:
        order = dataset.shuffle(buffer, seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
        batches = order.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if per_batch is None:
            return batches
        number = tf.constant(epoch, tf.int64)

        def apply(step, batch):  # (x, y) or (x, y, sample_weight): weights pass through unchanged
            x, y, *rest = batch
            return (*per_batch(x, y, number, step), *rest)

        return batches.enumerate().map(apply, num_parallel_calls=1, deterministic=True)

    stream = one_epoch(first_epoch)
    for epoch in range(first_epoch + 1, max(first_epoch + 1, end_epoch or 0)):
        stream = stream.concatenate(one_epoch(epoch))
    return _with_options(stream.repeat()).prefetch(tf.data.AUTOTUNE)


def _with_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    # No autotuning thread. At the end of `fit` (and of every search trial) deleting the
    # training iterator joins that thread, which can be asleep until its next optimization,
    # and its period grows to a minute: up to that long of nothing after the last epoch
    # (docs/benchmarks.md, issue 28). The knobs it would tune keep their starting values; an
    # epoch takes as long.
    options.autotune.enabled = False
    # The cached source is not file-based, so a multi-worker strategy must shard by data.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def batched(dataset: tf.data.Dataset, *, batch_size: int, seed: int, training: bool, **options) -> tf.data.Dataset:
    """`make_pipeline` of `dataset`: shuffled (with `seed`) when `training`, batched, prefetched."""
    return make_pipeline(dataset, batch_size=batch_size, training=training, seed=seed, **options)
