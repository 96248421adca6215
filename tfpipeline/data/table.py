"""Tables: a CSV/TSV file, or a folder of them, → train / validation / test `tf.data` splits of
`(features dict, int label)` and the `TableInput` spec the model and the export are built from.

Order of work, so that nothing about validation or test leaks into the model:

    read (tablefile) → drop rows without a label → split (seeded, stratified by the label)
    → infer column types from the training split → statistics and vocabularies from the
    training split → every split converted with them

This module owns that order for a table read into memory (`load_table`, `read_parts`, the
seeded stratified `carve`), what both paths share (the `DatasetSpec`, the classes, a worker's
shard, `--class-weight balanced`) and the NumPy views the baseline and the report read
(`arrays`, `baseline_arrays`). What each column is, and its statistics, is `tablecolumns`'s;
a table larger than `--cache-budget` is not read into memory but streamed from its file
(`tablestream`, put together by `load_streamed`). `dataset.source` says which: "read"
("memory" or "stream"), "cache", "split".

`shard=(i, n)` gives worker i of n only training rows k % n == i (the split's file order); every
worker reads and fits the whole training split itself, deterministically, so statistics,
vocabularies and class weights are identical on every worker without any communication.

The features of an example are a dict of one value per feature column: float32 (NaN when
missing), int64 for integer codes (the column's `missing_code` when missing) and strings ("" when
missing). The model's first layers (`tfpipeline.models.table`) impute and encode them, so the
same raw values are what a SavedModel's caller sends.
"""

from __future__ import annotations

import collections
import hashlib
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfpipeline.data import folders, paths, tablefile, tablestream
from tfpipeline.data.datasets import Datasets, DatasetSpec
from tfpipeline.data.tablecolumns import infer_columns, typed_columns
from tfpipeline.errors import UserError
from tfpipeline.inputs.table import TableInput

#: Splits carved from a single file: the test share of all rows (the validation share comes from
#: `validation_fraction`, of the rows left).
TEST_FRACTION = 0.2
#: The gradient-boosted baseline of a streamed table trains on at most this many training rows.
BASELINE_ROWS = 100_000


def class_names_of(labels: np.ndarray) -> tuple[str, ...]:
    """The distinct labels, in numeric order when all are numbers, else alphabetical."""
    distinct = sorted(set(labels.tolist()))
    try:
        return tuple(sorted(distinct, key=float))
    except ValueError:
        return tuple(distinct)


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """`--class-weight balanced`: n / (classes × count of the class), from the training labels."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)} | {
        c: 1.0 for c in range(num_classes) if c not in set(present.tolist())}


def class_weighted(dataset: tf.data.Dataset, weights: dict[int, float]) -> tf.data.Dataset:
    """Unbatched `(features, label)` examples → `(features, label, weight)`: `--class-weight` as
    Keras's sample weights, so the search's trials and the final training weigh alike."""
    table = tf.constant([weights.get(i, 1.0) for i in range(max(weights) + 1)], tf.float32)
    return dataset.map(lambda features, label: (features, label, tf.gather(table, label)))


def balanced(datasets: Datasets, examples: tf.data.Dataset) -> tuple[tf.data.Dataset, dict[int, float]]:
    """`--class-weight balanced`: `examples` weighted by the training split's class frequencies
    (of the whole split: a streamed table's and a worker's share's from the counts the first
    pass took, `dataset.source.label_counts`, by the same rule)."""
    source = datasets.spec.source
    if source.get("read") == "stream" or "shard" in source:
        counts = source["label_counts"]["train"]
        present = [i for i, name in enumerate(datasets.spec.class_names) if counts.get(name)]
        frequency = np.array([counts[datasets.spec.class_names[i]] for i in present], dtype=np.float64)
        # compute_class_weight("balanced"): n / (classes present × count of the class).
        recip = frequency.sum() / (len(present) * frequency)
        weights = {c: float(w) for c, w in zip(present, recip)} | {
            c: 1.0 for c in range(datasets.spec.num_classes) if c not in present}
        return class_weighted(examples, weights), weights
    weights = class_weights(arrays(datasets.train)[1], datasets.spec.num_classes)
    return class_weighted(examples, weights), weights


def fingerprint(parts: dict[str, tablefile.RawTable], label: str) -> str:
    digest = hashlib.sha256(label.encode())
    for role, part in parts.items():
        digest.update(role.encode())
        for name in part.names:
            digest.update(repr((name, part.values[name].tolist())).encode())
    return f"rows-{digest.hexdigest()[:12]}"


def to_dataset(spec: TableInput, part: tablefile.RawTable) -> tf.data.Dataset:
    """Unbatched `(features, label)` examples of one split."""
    features = {c.name: c.values(part.values[c.name]) for c in spec.features}
    index = {name: i for i, name in enumerate(spec.class_names)}
    labels = np.array([index[v] for v in part.values[spec.label]], dtype=np.int32)
    return tf.data.Dataset.from_tensor_slices((features, labels))


def examples(spec: TableInput, part: tablefile.RawTable) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One split as NumPy: the feature dict and the label indices (for the baseline and tests)."""
    index = {name: i for i, name in enumerate(spec.class_names)}
    return ({c.name: c.values(part.values[c.name]) for c in spec.features},
            np.array([index[v] for v in part.values[spec.label]], dtype=np.int32))


def resolve(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def is_table(name: str) -> bool:
    """Whether `--dataset name` is a table: a CSV/TSV file, or a folder holding train.csv."""
    path = Path(name).expanduser()
    if path.is_file():
        return path.suffix.lower() in (".csv", ".tsv", ".tab", ".txt")
    return path.is_dir() and any((path / f"train{ext}").is_file() for ext in (".csv", ".tsv"))


def read_parts(path: Path, label: str, validation_fraction: float, seed: int
               ) -> tuple[dict[str, tablefile.RawTable], dict]:
    """The three splits of a file or a folder, rows without a label dropped, and how they were made.

    Raises:
        UserError: no such file or folder, a file without the label column, or a folder whose
            files have different columns.
    """
    if path.is_dir():
        files = {role: tablefile.split_file(path, role) for role in ("train", "validation", "test")}
        if files["train"] is None or files["test"] is None:
            raise UserError(f"The folder {path} needs train.csv and test.csv (and may hold validation.csv); "
                            f"it has: {', '.join(sorted(p.name for p in path.iterdir())) or 'nothing'}.")
        parts = {role: _labelled(tablefile.read(f), label) for role, f in files.items() if f is not None}
        for role, part in parts.items():
            if set(part.names) != set(parts["train"].names):
                raise UserError(f"{files[role]} has the columns {', '.join(part.names)}, but {files['train']} "
                                f"has {', '.join(parts['train'].names)}; the files must have the same columns.")
        rule = {"layout": "files", "files": {r: str(f) for r, f in files.items() if f is not None}}
        if "validation" not in parts:
            parts["train"], parts["validation"], how = carve(parts["train"], label, validation_fraction, seed)
            rule["validation"] = {"carved_from": "train", "fraction": validation_fraction, **how}
        return parts, rule
    table = _labelled(tablefile.read(path), label)
    rest, test, how = carve(table, label, TEST_FRACTION, seed)
    train, validation, _ = carve(rest, label, validation_fraction, seed)
    parts = {"train": train, "validation": validation, "test": test}
    train.skipped = table.skipped  # reported once, with the training split
    return parts, {"layout": "file", "file": str(path), "test_fraction": TEST_FRACTION,
                   "validation_fraction": validation_fraction, "seed": seed, **how}


def _labelled(table: tablefile.RawTable, label: str) -> tablefile.RawTable:
    """`table` without its rows that have no label; rows dropped are listed as skipped."""
    if label not in table.values:
        raise UserError(f"The label column {label!r} is not in {table.path}; its columns are: "
                        f"{', '.join(table.names)}. Pass one of them with --label-column.")
    keep = np.array([v is not None for v in table.values[label]])
    kept = table.take(np.flatnonzero(keep))
    kept.skipped = table.skipped + [(0, "no label")] * int((~keep).sum())
    return kept


def carve(table: tablefile.RawTable, label: str, fraction: float, seed: int):
    """Split `table` into (rest, held out `fraction`), seeded and stratified by the label when
    every class has at least two rows (else at random, and said so).

    Raises:
        UserError: `fraction` is not between 0 and 1 or leaves a side empty.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0 or not 1 <= round(len(table) * fraction) < len(table):
        raise UserError(f"Holding out {fraction} of {len(table)} rows leaves no rows on one side; "
                        "use a --validation-fraction between 0 and 1 (such as 0.2) or a larger table.")
    labels = table.values[label].astype(str)
    counts = collections.Counter(labels.tolist())
    held = round(len(table) * fraction)
    stratify = min(counts.values()) >= 2 and held >= len(counts) and len(table) - held >= len(counts)
    rest, out = train_test_split(np.arange(len(table)), test_size=held, random_state=seed,
                                 stratify=labels if stratify else None)
    return table.take(np.sort(rest)), table.take(np.sort(out)), {"stratified": bool(stratify)}


def load_table(path: str | Path, label: str, *, validation_fraction: float = 0.2, seed: int = 42,
               flags: dict[str, tuple[str, ...]] | None = None, quick: bool = False,
               cache_budget: int | None = None, work_dir: str | Path = "work",
               shard: tuple[int, int] | None = None) -> Datasets:
    """Train / validation / test datasets of a table, and its `TableInput` on `spec.input`.

    Args:
        path: a CSV/TSV file (validation and test carved from it, seeded) or a folder holding
            train.csv, test.csv and optionally validation.csv.
        label: the label column (required; its distinct values are the classes).
        validation_fraction: share of the training rows held out for validation.
        seed: fixes which rows go to which split.
        flags: role → column names from `--numeric`, `--categorical`, `--ignore`.
        quick: accepted for the image loader's interface; a table is read whole.
        cache_budget: bytes the table may take in memory (None: `folders.default_cache_budget()`);
            a larger one is streamed from its file and cached on disk under `work_dir`.
        work_dir: the disk cache goes under `<work_dir>/<table name>/cache/`.
        shard: (worker index, worker count): this worker's `train` is only its share of the
            training rows (row k of the split, in file order, when k % count == index); the
            statistics are those of the whole training split, the same on every worker.

    Returns:
        `Datasets` of unbatched `(features dict, int32 label)` examples per role.

    Raises:
        UserError: a missing file or label column, a label with fewer than two classes, an
            empty file, a bad flag or shard (see `tablefile.read`, `read_parts`, `typed_columns`).
    """
    path = resolve(path)
    paths.require(path, "table")
    # The header's names are input names (`tablefile.input_name`): so are the user's.
    label = tablefile.input_name(label)
    flags = {role: tuple(tablefile.input_name(n) for n in names) for role, names in (flags or {}).items()}
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}.")
    plan = tablestream.memory_plan(path, (label, validation_fraction, seed, flags), cache_budget, work_dir)
    if plan.kind != "memory":
        return load_streamed(path, label, plan, validation_fraction=validation_fraction, seed=seed,
                             flags=flags or {}, shard=shard)
    parts, rule = read_parts(path, label, validation_fraction, seed)
    class_names = _class_names(np.concatenate([p.values[label] for p in parts.values()]), label)
    columns = infer_columns(parts["train"], label, flags or {})
    spec_input = TableInput(columns, label, class_names)
    unparseable = {c.name: sum(tablefile.parse_floats(p.values[c.name])[1] for p in parts.values())
                   for c in spec_input.features if c.dtype == "float32"}
    skipped = tablefile.RawTable(path, [], {}, [s for p in parts.values() for s in p.skipped])
    counts = collections.Counter(parts["train"].values[label].tolist())
    spec = _spec(path, spec_input, fingerprint(parts, label), {role: len(p) for role, p in parts.items()}, {
        "split": rule, "skipped": skipped.skipped_report(), "unparseable": unparseable, "cache": plan.to_json(),
        "read": "memory", "label_counts": {"train": {c: counts[c] for c in class_names}},
        **({"shard": _shard_record(shard, len(parts["train"]))} if shard else {})})
    _announce(spec, spec_input)
    if shard:  # statistics above are the whole training split's, on every worker alike
        parts["train"] = parts["train"].take(np.arange(shard[0], len(parts["train"]), shard[1]))
    made = {role: to_dataset(spec_input, p) for role, p in parts.items()}
    # Made from arrays in memory: nothing to decode or cache between epochs.
    return Datasets(spec, made["train"], made["validation"], made["test"], in_memory=True)


def _class_names(labels: np.ndarray, label: str) -> tuple[str, ...]:
    class_names = class_names_of(labels)
    if len(class_names) < 2:
        raise UserError(f"The label column {label!r} has only one class ({class_names[0]!r}); a classifier "
                        "needs at least two. Check --label-column.")
    return class_names


def _spec(path: Path, spec_input: TableInput, version: str, num_examples: dict[str, int], source: dict
          ) -> DatasetSpec:
    """The `DatasetSpec` of a table; `source` holds "split", "skipped", "unparseable" (counts) and
    how it was read ("read", "cache", ...)."""
    rule = source["split"]
    return DatasetSpec(
        name=path.stem if path.is_file() else path.name, version=version,
        input_shape=(len(spec_input.features),), num_classes=len(spec_input.class_names),
        class_names=spec_input.class_names,
        splits={role: rule.get("file", rule.get("files", {}).get(role, "")) for role in num_examples},
        num_examples=num_examples,
        source={"kind": "table", "path": str(path), "label": spec_input.label, **source,
                "unparseable": {"rule": "values that are not numbers in a numeric column are treated as missing",
                                "counts": {k: v for k, v in source["unparseable"].items() if v}}},
        input=spec_input)


def _shard_record(shard: tuple[int, int], rows: int) -> dict:
    index, count = shard
    if rows < count:
        raise UserError(f"The training split has {rows} rows for {count} workers; each worker trains on its "
                        "own share of the rows, so it needs at least one per worker. Train on fewer workers.")
    return {"worker": index, "workers": count, "rows": len(range(index, rows, count)), "of": rows,
            "rule": "training row k (the split's file order) goes to worker k % workers; statistics, "
                    "vocabularies and class weights come from the whole training split, which every worker "
                    "reads and fits deterministically, so they are identical on every worker"}


def load_streamed(path: Path, label: str, plan: folders.CachePlan, *, validation_fraction: float, seed: int,
                  flags: dict[str, tuple[str, ...]], shard: tuple[int, int] | None = None) -> Datasets:
    """`load_table` of a table over the cache budget: two passes over the file (`tablestream.survey`,
    then `tablestream.fit_stream`), then each split a `tablestream.stream_dataset`, cached on disk as
    `plan` says (`tablestream.stream_splits`)."""
    stream, rule = tablestream.stream_of(path, label, validation_fraction, seed, test_fraction=TEST_FRACTION)
    counts, sample, skipped = tablestream.survey(stream)
    class_names = _class_names(np.array(sorted(set().union(*counts.values())), dtype=object), label)
    columns, unparseable = tablestream.fit_stream(stream, typed_columns(sample, label, flags))
    spec_input = TableInput(columns, label, class_names)
    num_examples = {role: sum(c.values()) for role, c in counts.items()}
    source = {"split": rule, "unparseable": {c.name: unparseable.get(c.name, 0) for c in spec_input.features
                                             if c.dtype == "float32"},
              "skipped": tablefile.RawTable(path, [], {}, skipped).skipped_report(), "cache": plan.to_json(),
              "read": "stream", "label_counts": {"train": {c: counts["train"][c] for c in class_names}},
              "types_from": {"sample_rows": len(sample), "of": num_examples["train"], "rule": "a seeded uniform "
                             f"sample (reservoir) of at most {tablestream.SAMPLE_ROWS:,} training rows"},
              **({"shard": _shard_record(shard, num_examples["train"])} if shard else {})}
    spec = _spec(path, spec_input, tablestream.stream_fingerprint(stream, rule), num_examples, source)
    size = plan.prepared_bytes / tablestream.MEMORY_PER_FILE_BYTE
    print(f"The table ({size / 2**20:,.1f} MiB of file; about {plan.prepared_bytes / 2**20:,.1f} MiB in memory) "
          f"exceeds --cache-budget ({plan.budget_bytes / 2**20:,.1f} MiB): streaming it from the file. Splits "
          f"carved per row by sha256(seed:line number); column types from a sample of {len(sample):,} of the "
          f"{num_examples['train']:,} training rows, statistics from all of them in one streaming pass; "
          + (f"each split cached on disk in {plan.directory}." if plan.kind == "disk" else
             "not cached (not enough free disk): each epoch reads the file again."), flush=True)
    _announce(spec, spec_input)
    rows = num_examples | ({"train": spec.source["shard"]["rows"]} if shard else {})
    made = tablestream.stream_splits(spec_input, stream, plan, rows, shard)
    return Datasets(spec, made["train"], made["validation"], made["test"], cache_plan=plan)


def baseline_arrays(datasets: Datasets) -> tuple[tuple[dict, np.ndarray], tuple[dict, np.ndarray], dict]:
    """What the gradient-boosted baseline trains and is scored on: (train, test, record). A table
    read into memory: its whole training split. A streamed one: every k-th training row, at most
    `BASELINE_ROWS` of them (an evenly spread sample of the file order), said in the record."""
    num_train = datasets.spec.num_examples["train"]
    if datasets.spec.source.get("read") != "stream" or num_train <= BASELINE_ROWS:
        train = arrays(datasets.train)
        return train, arrays(datasets.test), {"train_rows": len(train[1]), "of": num_train}
    every = -(-num_train // BASELINE_ROWS)
    train = arrays(datasets.train.shard(every, 0))
    return train, arrays(datasets.test), {"train_rows": len(train[1]), "of": num_train,
                                          "rule": f"every {every}th training row (file order)"}


def _announce(spec: DatasetSpec, table: TableInput) -> None:
    skipped = spec.source["skipped"]["count"]
    print(f"Table {spec.source['path']}: {len(table.class_names)} classes of {table.label!r}, "
          + ", ".join(f"{spec.num_examples[r]:,} {r}" for r in ("train", "validation", "test")) + " rows"
          + (f"; {skipped} rows skipped (wrong number of fields, or no label)" if skipped else "")
          + ". Columns (types inferred from the training split; --numeric/--categorical/--ignore override):",
          flush=True)
    for line in table.summary_lines():
        print(line, flush=True)


def arrays(dataset: tf.data.Dataset) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """An unbatched table split as NumPy (strings as `str`): what the baseline and the report read."""
    # To the end of the dataset, not just its one batch: a split cached on disk is only kept once
    # an iterator has seen its end.
    features, labels = list(dataset.batch(1 << 30))[0]
    return ({k: (np.array([s.decode() for s in v.numpy()], dtype=object) if v.dtype == tf.string else v.numpy())
             for k, v in features.items()}, labels.numpy())
