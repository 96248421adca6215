"""Class-per-folder image datasets: a folder of JPEG/PNG files → train / validation / test.

Two layouts (see docs/images.md):

    DIR/train/<class>/*  [DIR/validation|val/<class>/*]  [DIR/test/<class>/*]   split layout
    DIR/<class>/*                                                              flat layout

Keras's directory loader (`keras.utils.image_dataset_from_directory`) finds the image files
and the classes (sorted folder names); we use its index only, not its pixels, because it
decodes inside its reader and stops the run on the first corrupt file. What it lacks, this
module adds:

- a scan that decodes every file once (a parallel `tf.data` pass) and drops the ones that do
  not decode (truncated, empty, not really an image), so training never meets a bad file;
  together with the files its extension filter passed over (`.DS_Store`, `notes.txt`) they
  are logged and counted in the metadata;
- a seeded, stable split of the flat layout (and of a missing validation or test split):
  each file goes by a hash of the seed and its path against fixed thresholds, so a file stays
  in its split when others are added or removed;
- the default input size and channels from the scanned training images (`default_size`);
- the cache decision: decoded, resized images in memory when they fit `--cache-budget`,
  else on disk under the work dir, else not cached (`cache_plan`).

Pixels go through `imaging.prepare`, the function the exported `serving_bytes` signature
runs too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfpipeline.data import imaging, paths
from tfpipeline.errors import UserError

#: Split folder names the split layout recognises, by role.
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}
#: Without --image-size, the longer side of the default input is at most this (see default_size).
MAX_DEFAULT_SIDE = 64
#: How many skipped files the log and the metadata name (all of them are counted).
SHOW_SKIPPED = 10


@dataclasses.dataclass
class FolderIndex:
    """The usable files of a folder dataset, by role, and what was left out."""

    root: Path
    layout: str  # "split" or "flat"
    class_names: tuple[str, ...]
    files: dict[str, list[str]]  # role -> file paths
    labels: dict[str, list[int]]  # role -> class index per file
    shapes: dict[str, np.ndarray]  # role -> (n, 3) decoded height, width, channels per file
    split_rule: dict  # how the roles were formed
    skipped: list[tuple[str, str]]  # (path, reason)


# --- finding the files ------------------------------------------------------------------

def _index_dir(directory: Path, class_names=None) -> tuple[list[str], list[int], tuple[str, ...]]:
    """(file paths, labels, class names) of one `<class>/*` folder, by Keras's loader."""
    import keras

    try:
        ds = keras.utils.image_dataset_from_directory(
            str(directory), labels="inferred", label_mode="int", class_names=class_names,
            batch_size=None, shuffle=False, verbose=False,
        )
    except ValueError as exc:  # no image files at all, or class folders that differ
        message = str(exc)
        if "No images found" in message:
            raise UserError(
                f"The folder {directory} holds no image files ({', '.join(imaging.IMAGE_EXTENSIONS)}) "
                "in class sub-folders. A folder dataset needs one sub-folder per class with the "
                "images in it, DIR/<class>/*.jpg, or DIR/train/<class>/*.jpg (see docs/images.md)."
            ) from None
        raise UserError(f"Cannot read the folder dataset {directory}: {message}") from None
    paths = list(ds.file_paths)
    names = tuple(ds.class_names)
    # The loader's labels are the first folder under `directory` (a class may nest folders).
    position = {name: i for i, name in enumerate(names)}
    labels = [position[Path(p).relative_to(directory).parts[0]] for p in paths]
    return paths, labels, names


def _strays(directories: list[Path], used: set[str]) -> list[str]:
    """Files under `directories` that the loader's extension filter passed over."""
    strays = []
    for directory in directories:
        for parent, _, names in os.walk(directory):
            strays.extend(p for p in (os.path.join(parent, n) for n in sorted(names)) if p not in used)
    return sorted(strays)


def detect_layout(root: Path) -> tuple[str, dict[str, Path]]:
    """("split", {role: folder}) or ("flat", {}) for a dataset folder; UserError if neither."""
    paths.require(root, "image")
    if not root.is_dir():
        raise UserError(f"--dataset {root} is a file, not a folder. Pass the folder that holds the class sub-folders.")
    subdirs = {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not subdirs:
        raise UserError(
            f"The dataset folder {root} is empty: it has no class sub-folders. Put each class's "
            "images in a sub-folder named after the class (DIR/<class>/*.jpg), or use the split "
            "layout DIR/train/<class>/*.jpg (see docs/images.md)."
        )
    found = {}
    for role, names in SPLIT_NAMES.items():
        for name in names:
            if name in subdirs and role not in found:
                found[role] = subdirs[name]
    if "train" in found:
        others = sorted(set(subdirs) - {p.name for p in found.values()})
        if others:
            raise UserError(
                f"The dataset folder {root} has a train/ folder, so it is read as the split layout "
                f"(train, validation or val, test), but it also has {', '.join(others)}. Move those "
                "folders out, or put every class folder directly under the dataset folder (flat layout)."
            )
        return "split", found
    if found:
        raise UserError(
            f"The dataset folder {root} has {', '.join(sorted(p.name for p in found.values()))}/ but no "
            "train/ folder. The split layout needs DIR/train/<class>/* (validation and test are "
            "optional); or put the class folders directly under the dataset folder (flat layout)."
        )
    return "flat", {}


def _hash_fraction(seed: int, relative: str) -> float:
    """A number in [0, 1) fixed by the seed and the file's path: the file's place in a split."""
    digest = hashlib.sha256(f"{seed}:{relative}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _carve(root: Path, paths, labels, fractions: dict[str, float], seed: int):
    """Split (paths, labels) by each file's `_hash_fraction` against fixed thresholds: the first
    role in `fractions` takes the files below its fraction, the next the files in the next
    band of its fraction, train the rest. A file's split depends on the seed, its path and the
    fractions only, never on which other files are there, so adding or removing files moves no
    other file between splits. Each class's share of a split is its share of the folder up to
    the draw of the hashes (a class of 100 files and a fraction of 0.1 gives about 10, not
    exactly 10)."""
    out = {role: ([], []) for role in ("train", *fractions)}
    for path, label in zip(paths, labels):
        place, low, role = _hash_fraction(seed, Path(path).relative_to(root).as_posix()), 0.0, "train"
        for held, fraction in fractions.items():
            if low <= place < low + fraction:
                role = held
                break
            low += fraction
        out[role][0].append(path)
        out[role][1].append(label)
    return out


def scan(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Decode every file once, in parallel: (indices that decode, their (h, w, c) shapes, c 1
    for an image whose pixels are all gray, else 3).

    The decode is `imaging.decode`'s own, so a file that passes here decodes in training.
    """
    def probe(i, path):
        image = imaging.decode(tf.io.read_file(path), 3)
        gray = tf.reduce_all(image[..., 0] == image[..., 1]) & tf.reduce_all(image[..., 1] == image[..., 2])
        shape = tf.shape(image)
        return i, tf.stack([shape[0], shape[1], tf.where(gray, 1, 3)])

    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), tf.constant(paths, tf.string)))
    ds = ds.map(probe, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors().batch(4096)
    good, shapes = [np.zeros([0], np.int64)], [np.zeros([0, 3], np.int64)]
    for i, shape in ds:
        good.append(i.numpy())
        shapes.append(shape.numpy())
    return np.concatenate(good), np.concatenate(shapes)


def index(root: str | os.PathLike, *, validation_fraction: float, seed: int, scanner=None) -> FolderIndex:
    """Find, check and split the image files of a folder dataset.

    Args:
        root: the dataset folder (either layout).
        validation_fraction: share of the flat layout (or of train/, when the split layout has
            no validation folder) held out for validation; the same share goes to test when
            there is no test folder.
        seed: fixes which files go to which split.
        scanner: does `scan`'s job (the same arguments and results); None: `scan`. Multi-worker
            training passes one that shares the work among the workers (`sharding.shared_scan`).
    """
    root = Path(root).expanduser().resolve()
    layout, folders = detect_layout(root)
    if not 0.0 < validation_fraction < 0.5:
        raise UserError(
            f"--validation-fraction must be between 0 and 0.5 for a folder dataset (the same share "
            f"is held out for test when there is no test folder), got {validation_fraction}."
        )
    read: dict[str, tuple[list[str], list[int]]] = {}
    if layout == "flat":
        paths, labels, class_names = _index_dir(root)
        missing = ["validation", "test"]
        carved_from, base = root, (paths, labels)
    else:
        paths, labels, class_names = _index_dir(folders["train"])
        read["train"] = (paths, labels)
        for role in ("validation", "test"):
            if role in folders:
                sub = {p.name for p in folders[role].iterdir() if p.is_dir()}
                unknown = sorted(sub - set(class_names))
                if unknown:
                    raise UserError(
                        f"{folders[role]} has class folders that train/ lacks: {', '.join(unknown)}. "
                        "Every class needs training images; add them to train/ or remove those folders."
                    )
                # Classes a split lacks are fine (it just has no images of them).
                p, lab, _ = _index_dir_with_classes(folders[role], class_names)
                read[role] = (p, lab)
        missing = [role for role in ("validation", "test") if role not in folders]
        carved_from, base = folders["train"], read["train"]
    if len(class_names) < 2:
        raise UserError(
            f"The folder dataset {root} has {len(class_names)} class folder"
            f"{'s' if len(class_names) != 1 else ''} ({', '.join(class_names) or 'none'}); a classifier "
            "needs at least two. Put each class's images in its own sub-folder."
        )

    # Every file the loader listed, checked once; what it left out is skipped too.
    all_paths = sorted({p for ps, _ in [base, *read.values()] for p in ps})
    good, shapes = (scanner or scan)(all_paths)
    good_set = {all_paths[i] for i in good}
    shape_of = {all_paths[i]: s for i, s in zip(good, shapes)}
    skipped = [(p, "does not decode as an image (corrupt, truncated, empty or another format)")
               for p in all_paths if p not in good_set]
    scanned_dirs = [root] if layout == "flat" else list(folders.values())
    strays = _strays(scanned_dirs, set(all_paths))
    if layout == "split":  # files beside the split folders
        strays = sorted(str(p) for p in root.iterdir() if p.is_file()) + strays
    skipped += [(p, "not an image file (by its name)") for p in strays]

    def keep(paths, labels):
        pairs = [(p, lab) for p, lab in zip(paths, labels) if p in good_set]
        return [p for p, _ in pairs], [lab for _, lab in pairs]

    fractions = {role: validation_fraction for role in missing}
    read = {role: keep(*pl) for role, pl in read.items()}
    if missing:
        read.update(_carve(carved_from, *keep(*base), fractions, seed))
    for role in ("train", "validation", "test"):
        if not read[role][0]:
            raise UserError(
                f"The folder dataset {root} has no usable {role} images"
                f"{' after the split' if role in missing else ''} ({len(skipped)} files were skipped). "
                "Add images, or choose another --validation-fraction."
            )
    empty = [class_names[c] for c in range(len(class_names)) if c not in set(read["train"][1])]
    if empty:
        raise UserError(
            f"The folder dataset {root} has no usable training images of class{'es' if len(empty) > 1 else ''} "
            f"{', '.join(empty)}. Add images to {'those folders' if len(empty) > 1 else 'that folder'} or remove it."
        )
    # A seeded order of the training files (the loader lists them class by class), so a shuffle
    # buffer smaller than the data still mixes the classes.
    order = np.random.default_rng(seed).permutation(len(read["train"][0]))
    read["train"] = ([read["train"][0][i] for i in order], [read["train"][1][i] for i in order])
    source = str(carved_from.relative_to(root))
    split_rule = {
        "layout": layout,
        "splits": {role: (f"{source}/ (the rest)" if role == "train" and missing
                          else f"{folders[role].name}/" if role in folders else f"{source}/ (held out)")
                   for role in ("train", "validation", "test")},
        "held_out": {role: {"from": f"{source}/", "fraction": validation_fraction, "seed": seed,
                            "rule": "sha256(seed:relative path) as a number in [0, 1): the held-out splits "
                                    "take consecutive bands of their fraction from 0, validation first; "
                                    "train the rest"}
                     for role in missing},
    }
    return FolderIndex(
        root=root, layout=layout, class_names=class_names,
        files={role: pl[0] for role, pl in read.items()},
        labels={role: pl[1] for role, pl in read.items()},
        shapes={role: np.array([shape_of[p] for p in pl[0]]).reshape(-1, 3) for role, pl in read.items()},
        split_rule=split_rule, skipped=skipped,
    )


def _index_dir_with_classes(directory: Path, class_names: tuple[str, ...]):
    """Index a validation or test folder with train's classes (the same label numbers);
    Keras wants exactly the folders that are there, so the labels are mapped by name."""
    paths, labels, names = _index_dir(directory)
    position = {name: i for i, name in enumerate(class_names)}
    return paths, [position[names[lab]] for lab in labels], class_names


# --- input size, channels, cache --------------------------------------------------------

def default_size(shapes: np.ndarray) -> tuple[int, int]:
    """The input size without --image-size: the median height and width of the training
    images, scaled down so the longer side is at most MAX_DEFAULT_SIDE, each side then
    rounded to a multiple of 4 (at least 8). A folder of 28x28 images keeps 28x28."""
    height, width = (float(v) for v in np.median(shapes[:, :2], axis=0))
    scale = min(1.0, MAX_DEFAULT_SIDE / max(height, width))
    return tuple(max(8, int(round(side * scale / 4)) * 4) for side in (height, width))


def default_channels(shapes: np.ndarray) -> int:
    """1 when every training image is grayscale (every pixel gray, whatever the file's own
    channel count), else 3."""
    return 3 if (shapes[:, 2] >= 3).any() else 1


def default_cache_budget() -> int:
    """A quarter of the machine's memory (or of the container's limit, when lower)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:  # cgroup v2
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total // 4


@dataclasses.dataclass(frozen=True)
class CachePlan:
    """Where the decoded, resized examples are kept between epochs."""

    kind: str  # "memory", "disk" or "none"
    prepared_bytes: int  # all roles, decoded and resized
    budget_bytes: int
    directory: str | None = None  # the disk cache's folder

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def cache_plan(num_examples: int, example_bytes: int, budget: int, directory: Path) -> CachePlan:
    """Memory when the prepared data fits `budget`; else disk in `directory` when the disk
    has room for it (with a quarter to spare); else no cache (each epoch decodes again)."""
    prepared = num_examples * example_bytes
    if prepared <= budget:
        return CachePlan("memory", prepared, budget)
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(directory).free >= prepared * 1.25:
        # A run killed while writing the cache leaves TF's lock files, which would make the
        # next run's cache refuse to start; the cache files themselves are only used once
        # complete (TF writes the index last).
        for lock in directory.glob("*.lockfile"):
            lock.unlink(missing_ok=True)
        return CachePlan("disk", prepared, budget, str(directory))
    return CachePlan("none", prepared, budget)


def cache_key(idx: FolderIndex, size: tuple[int, int], channels: int) -> str:
    """Identifies the prepared data: the files (with size and time), roles, input size, channels."""
    h = hashlib.sha256(f"{size}:{channels}".encode())
    for role in ("train", "validation", "test"):
        for path in idx.files[role]:
            stat = os.stat(path)
            h.update(f"{role}:{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def file_list(paths: list[str], labels: list[int]) -> tf.data.Dataset:
    """`(path, int32 label)` pairs, not yet read: what `decode` maps and a worker shards."""
    return tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(labels, tf.int32)))


def decode(files: tf.data.Dataset, size: tuple[int, int], channels: int) -> tf.data.Dataset:
    """`file_list` pairs → unbatched `(uint8 [H, W, C] image, int32 label)`, in a parallel map."""

    def load(path, label):
        return imaging.prepare(tf.io.read_file(path), size, channels), label

    return files.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def dataset(paths: list[str], labels: list[int], size: tuple[int, int], channels: int) -> tf.data.Dataset:
    """Unbatched `(uint8 [H, W, C] image, int32 label)` examples, decoded in a parallel map."""
    return decode(file_list(paths, labels), size, channels)


def report_skipped(skipped: list[tuple[str, str]], root: Path) -> None:
    if not skipped:
        return
    print(f"Skipped {len(skipped)} file{'s' if len(skipped) != 1 else ''} of {root} "
          "(counted in metadata.json, dataset.source.skipped):", flush=True)
    for path, reason in skipped[:SHOW_SKIPPED]:
        print(f"  {Path(path).relative_to(root)}: {reason}", flush=True)
    if len(skipped) > SHOW_SKIPPED:
        print(f"  ... and {len(skipped) - SHOW_SKIPPED} more", flush=True)
