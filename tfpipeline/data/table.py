"""Tables: a CSV/TSV file, or a folder of them, → train / validation / test `tf.data` splits of
`(features dict, int label)` and the `TableInput` spec the model and the export are built from.

Order of work, so that nothing about validation or test leaks into the model:

    read (tablefile) → drop rows without a label → split (seeded, stratified by the label)
    → infer column types from the training split → statistics and vocabularies from the
    training split → every split converted with them

Column types are inferred from the values (`infer_column`) and stated; `--numeric`,
`--categorical` and `--ignore` override them. Identifiers, dates and free text are detected and
left out with a note: a model that memorizes an identifier learns nothing that generalizes,
and dates and text need encodings of their own.

A table larger than `--cache-budget` (its files' size times `MEMORY_PER_FILE_BYTE`, an estimate
of what the rows take as Python strings) is not read into memory: it streams from its file
(`load_streamed`). One pass counts the rows and labels of each split and keeps a seeded uniform
sample of at most `SAMPLE_ROWS` training rows, from which the column types are inferred; a
second pass fits the statistics and vocabularies on the whole training split, chunk by chunk,
with `fit_column`'s own arithmetic (`column_stats`, `merge_stats`, `fitted`); each split is then
a `tf.data` generator over the file, cached on disk under the work dir. The in-memory carve is
seeded and stratified over all rows; a stream cannot hold them, so it carves per row, by
sha256(seed:line number) against the shares (the text pipeline's `textfiles.carve_role`), not
stratified. `dataset.source` says which: "read" ("memory" or "stream"), "cache", "split".

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
import dataclasses
import hashlib
import random
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import tensorflow as tf

from tfpipeline.data import folders, tablefile, textfiles
from tfpipeline.data.datasets import Datasets, DatasetSpec
from tfpipeline.errors import UserError
from tfpipeline.inputs.table import CATEGORICAL, DTYPES, IGNORED, NUMERIC, Column, TableInput

#: Integer columns with at most this many distinct values are codes (categories), not amounts.
MAX_CODES = 10
#: A category keeps at most this many values (the most frequent); the rest share the OOV slot.
MAX_VOCABULARY = 100
#: At least this share of a column's present values must parse as numbers for it to be numeric.
NUMERIC_SHARE = 0.95
#: Identifiers are only recognized among at least this many values (all distinct).
MIN_ROWS_FOR_IDENTIFIER = 20
BOOLEAN_PAIRS = ({"true", "false"}, {"yes", "no"}, {"t", "f"}, {"y", "n"})
DATE = re.compile(r"^(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}/\d{1,2}/\d{2,4})([ T]\d{1,2}:\d{2}(:\d{2})?)?$")
#: Splits carved from a single file: the test share of all rows (the validation share comes from
#: `validation_fraction`, of the rows left).
TEST_FRACTION = 0.2
#: A table is streamed from its file, not read into memory, when its files' size times this
#: (a value read into memory is a Python string of ~50 bytes plus a pointer; in a file it is a
#: few characters and a comma) exceeds --cache-budget.
MEMORY_PER_FILE_BYTE = 10
#: A streamed table's column types are inferred from a seeded uniform sample of at most this
#: many training rows (its statistics from all of them).
SAMPLE_ROWS = 10_000
#: A streamed table's rows are fitted and converted this many at a time.
CHUNK_ROWS = 4096
#: The gradient-boosted baseline of a streamed table trains on at most this many training rows.
BASELINE_ROWS = 100_000


def infer_column(name: str, values: np.ndarray) -> Column:
    """A column's role from its training values (str, or None when missing)."""
    present = [v for v in values if v is not None]
    missing = len(values) - len(present)
    distinct = set(present)
    if not present:
        return Column(name, IGNORED, "empty", missing=missing, note="no values in the training split")
    if len(distinct) == 1:
        return Column(name, IGNORED, "constant", missing=missing, note=f"always {present[0]!r}: nothing to learn")
    floats, unparseable = tablefile.parse_floats(np.array(present, dtype=object))
    if unparseable <= (1 - NUMERIC_SHARE) * len(present):
        numbers = floats[~np.isnan(floats)]
        integers = bool(np.all(numbers == np.round(numbers)))
        if integers and len(set(numbers.tolist())) <= MAX_CODES:
            return Column(name, CATEGORICAL, "integer code", dtype="int64", missing=missing)
        if integers and _is_row_number(numbers):
            return Column(name, IGNORED, "identifier", missing=missing, note="a row number (distinct, increasing)")
        return Column(name, NUMERIC, "number", dtype="float32", missing=missing, unparseable=unparseable)
    lowered = {v.lower() for v in distinct}
    if any(lowered == pair for pair in BOOLEAN_PAIRS):
        return Column(name, CATEGORICAL, "boolean", missing=missing)
    if sum(bool(DATE.match(v)) for v in present) >= 0.9 * len(present):
        return Column(name, IGNORED, "date", missing=missing, note="dates are left out (no date encoding)")
    if np.mean([len(v.split()) for v in present]) >= 4:
        return Column(name, IGNORED, "text", missing=missing, note="free text is left out (no text encoding)")
    if len(distinct) == len(present) >= MIN_ROWS_FOR_IDENTIFIER:
        return Column(name, IGNORED, "identifier", missing=missing, note="a distinct value per row")
    return Column(name, CATEGORICAL, "string", missing=missing)


def _is_row_number(numbers: np.ndarray) -> bool:
    """Distinct integers that increase down the file: a row number, not an amount (the splits
    keep file order)."""
    return len(numbers) >= MIN_ROWS_FOR_IDENTIFIER and bool(np.all(np.diff(numbers) > 0))


def override(column: Column, values: np.ndarray, role: str) -> Column:
    """`column` as a flag (`--numeric`, `--categorical`, `--ignore`) says."""
    flag = {NUMERIC: "--numeric", CATEGORICAL: "--categorical", IGNORED: "--ignore"}[role]
    if role == IGNORED:
        return Column(column.name, IGNORED, flag, missing=column.missing, note="left out by " + flag)
    if role == NUMERIC:
        return Column(column.name, NUMERIC, flag, dtype="float32", missing=column.missing,
                      unparseable=tablefile.parse_floats(values)[1])
    floats, unparseable = tablefile.parse_floats(values)
    numbers = floats[~np.isnan(floats)]
    integers = unparseable == 0 and len(numbers) and bool(np.all(numbers == np.round(numbers)))
    return Column(column.name, CATEGORICAL, flag, dtype="int64" if integers else "string", missing=column.missing)


def fit_column(column: Column, values: np.ndarray) -> Column:
    """`column` with its statistics or vocabulary from the training `values`."""
    return fitted(column, column_stats(column, values))


def column_stats(column: Column, values: np.ndarray) -> dict:
    """What `fitted` needs of some training `values` of `column`; `merge_stats` adds those of
    two parts, so a streamed table is fitted chunk by chunk with the same arithmetic."""
    stats = {"missing": int(sum(v is None for v in values))}
    if column.role == NUMERIC:
        floats, unparseable = tablefile.parse_floats(values)
        numbers = floats[~np.isnan(floats)].astype(np.float64)
        mean = float(numbers.mean()) if len(numbers) else 0.0
        deviations = numbers - mean
        # numbers.std() is sqrt(m2 / n), computed the same way: one chunk fits as before.
        stats.update(n=len(numbers), mean=mean, m2=float(np.multiply(deviations, deviations).sum()),
                     nan=int(np.isnan(floats).sum()), unparseable=unparseable)
    elif column.role == CATEGORICAL:
        present = [v for v in column.values(values).tolist() if v != column.missing_value()] \
            if column.dtype == "string" else [int(v) for v in tablefile.parse_floats(values)[0] if not np.isnan(v)]
        stats["counts"] = collections.Counter(present)
    return stats


def merge_stats(a: dict | None, b: dict) -> dict:
    """`column_stats` of two parts combined (means and squared deviations by Chan et al.'s rule)."""
    if a is None:
        return b
    merged = {"missing": a["missing"] + b["missing"]}
    if "counts" in a:
        merged["counts"] = a["counts"] + b["counts"]
    if "n" in a:
        n = a["n"] + b["n"]
        delta = b["mean"] - a["mean"]
        merged.update(n=n, mean=a["mean"] + delta * b["n"] / n if n else 0.0,
                      m2=a["m2"] + b["m2"] + (delta * delta * a["n"] * b["n"] / n if n else 0.0),
                      nan=a["nan"] + b["nan"], unparseable=a["unparseable"] + b["unparseable"])
    return merged


def fitted(column: Column, stats: dict) -> Column:
    """`column` with the statistics or vocabulary `stats` (`column_stats`) describe."""
    if column.role == NUMERIC:
        std = float(np.sqrt(stats["m2"] / stats["n"])) if stats["n"] > 1 else 1.0
        return _replace(column, mean=stats["mean"], std=std if std > 0 else 1.0, missing=stats["nan"],
                        missing_indicator=stats["nan"] > 0, unparseable=stats["unparseable"])
    if column.role == CATEGORICAL:
        counts = stats["counts"]
        vocabulary = tuple(v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))
        note = column.note
        if len(vocabulary) > MAX_VOCABULARY:
            note = f"{len(vocabulary)} values; the {MAX_VOCABULARY} most frequent kept, the rest out-of-vocabulary"
        vocabulary = vocabulary[:MAX_VOCABULARY]
        code = int(min(vocabulary)) - 1 if column.dtype == "int64" and vocabulary else -1
        return _replace(column, vocabulary=vocabulary, missing_code=code, note=note, missing=stats["missing"])
    return _replace(column, missing=stats["missing"])


def _replace(column: Column, **changes) -> Column:
    return dataclasses.replace(column, **changes)


def infer_columns(table: tablefile.RawTable, label: str, flags: dict[str, tuple[str, ...]]) -> tuple[Column, ...]:
    """Every column but the label, typed (flags win) and fitted on `table` (the training split).

    Args:
        table: the training split.
        label: the label column (left out).
        flags: role ("numeric", "categorical", "ignored") → the column names a flag gave it.

    Raises:
        UserError: as `typed_columns`.
    """
    return tuple(fit_column(c, table.values[c.name]) for c in typed_columns(table, label, flags))


def typed_columns(table: tablefile.RawTable, label: str, flags: dict[str, tuple[str, ...]]) -> tuple[Column, ...]:
    """Every column but the label, typed from the values of `table` (the training split, or a
    streamed table's sample of it), flags winning; not fitted.

    Raises:
        UserError: a flag names a column the table does not have, or the label, or one column
            twice; or no feature column is left.
    """
    forced = {}
    for role, chosen in flags.items():
        for name in chosen:
            if name not in table.names or name == label:
                raise UserError(f"The column {name!r} given to --{'ignore' if role == IGNORED else role} is "
                                + ("the label column" if name == label else "not in the table")
                                + f"; the columns are: {', '.join(n for n in table.names if n != label)}.")
            if name in forced:
                raise UserError(f"The column {name!r} is given to two of --numeric, --categorical and --ignore.")
            forced[name] = role
    columns = []
    for name in table.names:
        if name == label:
            continue
        column = infer_column(name, table.values[name])
        columns.append(override(column, table.values[name], forced[name]) if name in forced else column)
    if not any(c.role != IGNORED for c in columns):
        raise UserError("No feature column is left to learn from: " + "; ".join(c.describe() for c in columns)
                        + ". Use --numeric or --categorical to keep a column.")
    return tuple(columns)


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
        files = {role: _split_file(path, role) for role in ("train", "validation", "test")}
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


def _split_file(folder: Path, role: str) -> Path | None:
    return next((folder / f"{role}{ext}" for ext in (".csv", ".tsv") if (folder / f"{role}{ext}").is_file()), None)


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
    if not path.exists():
        raise UserError(f"The table {path} does not exist. Pass a CSV/TSV file, or a folder holding "
                        "train.csv and test.csv, with --dataset.")
    # The header's names are input names (`tablefile.input_name`): so are the user's.
    label = tablefile.input_name(label)
    flags = {role: tuple(tablefile.input_name(n) for n in names) for role, names in (flags or {}).items()}
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}.")
    plan = memory_plan(path, (label, validation_fraction, seed, flags), cache_budget, work_dir)
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


# --- a table larger than the cache budget: streamed from its file ---------------------------

def memory_plan(path: Path, identity: tuple, cache_budget: int | None, work_dir: str | Path) -> folders.CachePlan:
    """"memory" when the table read into memory (about `MEMORY_PER_FILE_BYTE` bytes per byte of
    its files) fits `cache_budget`; else "disk" (streamed, each split cached in a file under
    `<work_dir>/<name>/cache/<key>/`) or "none" (streamed each epoch: no room on disk).
    `identity`: what else fixes the splits' contents (label, fractions, seed, flags), for the key."""
    budget = folders.default_cache_budget() if cache_budget is None else int(cache_budget)
    files = [f for f in (_split_file(path, r) for r in ("train", "validation", "test")) if f] if path.is_dir() \
        else [path]
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    size = sum(size for _, size, _ in stats)
    key = hashlib.sha256(repr((stats, identity)).encode()).hexdigest()[:16]
    name = path.stem if path.is_file() else path.name
    # One "example" of the whole table's estimated bytes: the same decision as the images'.
    return folders.cache_plan(1, size * MEMORY_PER_FILE_BYTE, budget, Path(work_dir) / name / "cache" / key)


@dataclasses.dataclass(frozen=True)
class Stream:
    """Where a streamed table's rows are and which split each goes to, decided per row.

    Attributes:
        sources: (file, its role, or None: carved by `fractions`) in reading order.
        names: the columns, in the first file's order (other files' rows are reordered to it).
        label: the label column.
        fractions: the carved roles' hash shares ("test", "validation"; train takes the rest).
        seed: fixes the carve.
    """

    sources: tuple[tuple[Path, str | None], ...]
    names: tuple[str, ...]
    label: str
    fractions: dict
    seed: int

    def rows(self, skipped: list[tuple[int, str]]) -> Iterator[tuple[str, int, list]]:
        """(role, line number, values in `names` order) of every labelled row, in file order.
        A row without a label is appended to `skipped`, as one with the wrong field count is."""
        at = self.names.index(self.label)
        for path, given in self.sources:
            own = tablefile.header(path)
            order = [own.index(n) for n in self.names]
            for line, values in tablefile.rows_of(path, len(own), skipped):
                values = [values[i] for i in order]
                if values[at] is None:
                    skipped.append((line, "no label"))
                    continue
                # The text pipeline's carve (textfiles.carve_role): sha256(seed:line) against the shares.
                yield given or textfiles.carve_role(self.seed, str(line), self.fractions), line, values


def stream_of(path: Path, label: str, validation_fraction: float, seed: int) -> tuple[Stream, dict]:
    """The `Stream` of a file or folder and its split rule (for `dataset.source.split`)."""
    rule = ("per row, no memory of the table: sha256(seed:line number) as a fraction in [0, 1); below "
            "the test share: test; in the next, validation's share: validation; else train (not stratified)")
    if path.is_dir():
        files = {role: _split_file(path, role) for role in ("train", "validation", "test")}
        if files["train"] is None or files["test"] is None:
            raise UserError(f"The folder {path} needs train.csv and test.csv (and may hold validation.csv); "
                            f"it has: {', '.join(sorted(p.name for p in path.iterdir())) or 'nothing'}.")
        names = tablefile.header(files["train"])
        for role, f in files.items():
            if f is not None and set(tablefile.header(f)) != set(names):
                raise UserError(f"{f} has the columns {', '.join(tablefile.header(f))}, but {files['train']} "
                                f"has {', '.join(names)}; the files must have the same columns.")
        carved = {} if files["validation"] else {"validation": validation_fraction}
        sources = tuple((f, None if role == "train" and carved else role) for role, f in files.items() if f)
        split = {"layout": "files", "files": {r: str(f) for r, f in files.items() if f is not None}}
        if carved:
            split["validation"] = {"carved_from": "train", "fraction": validation_fraction, "seed": seed,
                                   "stratified": False, "rule": rule}
    else:
        names, sources = tablefile.header(path), ((path, None),)
        carved = {"test": TEST_FRACTION, "validation": (1 - TEST_FRACTION) * validation_fraction}
        split = {"layout": "file", "file": str(path), "test_fraction": TEST_FRACTION,
                 "validation_fraction": validation_fraction, "seed": seed, "stratified": False, "rule": rule}
    if label not in names:
        raise UserError(f"The label column {label!r} is not in {sources[0][0]}; its columns are: "
                        f"{', '.join(names)}. Pass one of them with --label-column.")
    return Stream(sources, tuple(names), label, carved, seed), split


def survey(stream: Stream) -> tuple[dict[str, collections.Counter], tablefile.RawTable, list]:
    """The first pass over a streamed table: each split's label counts, a seeded uniform sample
    of at most `SAMPLE_ROWS` training rows (reservoir sampling, kept in file order: the column
    types are inferred from it) and the rows skipped."""
    skipped, counts, sample, seen = [], {r: collections.Counter() for r in ("train", "validation", "test")}, [], 0
    rng, at = random.Random(stream.seed), stream.names.index(stream.label)
    for role, line, values in stream.rows(skipped):
        counts[role][values[at]] += 1
        if role == "train":
            seen += 1
            slot = seen - 1 if len(sample) < SAMPLE_ROWS else rng.randrange(seen)
            if slot < SAMPLE_ROWS:
                sample[slot:slot + 1] = [(line, values)]
    empty = [role for role, c in counts.items() if not c]
    if len(empty) == len(counts):
        raise UserError(f"The table {stream.sources[0][0]} has a header ({', '.join(stream.names)}) but no data rows"
                        + (f" that could be read ({len(skipped)} rows skipped: wrong number of fields, or no label)"
                           if skipped else "") + ".")
    if empty:
        raise UserError(f"The table {stream.sources[0][0]} gives no rows to the {' and '.join(empty)} split"
                        f"{'s' if len(empty) > 1 else ''}; use a --validation-fraction between 0 and 1 (such as "
                        "0.2) or a larger table.")
    sample.sort(key=lambda pair: pair[0])
    columns = np.array([values for _, values in sample], dtype=object).T
    return counts, tablefile.RawTable(stream.sources[0][0], list(stream.names),
                                      {n: columns[i] for i, n in enumerate(stream.names)}), skipped


def fit_stream(stream: Stream, typed: tuple[Column, ...]) -> tuple[tuple[Column, ...], dict[str, int]]:
    """The second pass: `typed` fitted on the whole training split, `CHUNK_ROWS` at a time
    (`column_stats` + `merge_stats`: `fit_column`'s arithmetic), and the unparseable values of
    each numeric column over all splits."""
    stats: dict[str, dict | None] = {c.name: None for c in typed}
    index = {n: i for i, n in enumerate(stream.names)}
    numeric = [(index[c.name], c.name) for c in typed if c.dtype == "float32"]
    unparseable, chunk = collections.Counter(), []

    def add(rows):
        values = np.array(rows, dtype=object).T
        for c in typed:
            stats[c.name] = merge_stats(stats[c.name], column_stats(c, values[index[c.name]]))

    for role, _, values in stream.rows([]):
        for i, name in numeric:
            unparseable[name] += values[i] is not None and np.isnan(tablefile.to_float(values[i]))
        if role == "train":
            chunk.append(values)
            if len(chunk) == CHUNK_ROWS:
                add(chunk)
                chunk = []
    if chunk:
        add(chunk)
    return tuple(fitted(c, stats[c.name]) for c in typed), dict(unparseable)


def stream_dataset(spec: TableInput, stream: Stream, role: str, shard: tuple[int, int] | None = None
                   ) -> tf.data.Dataset:
    """Unbatched `(features, label)` examples of one split, read from the file by a generator
    (`CHUNK_ROWS` rows converted at a time, as `to_dataset` converts a split in memory); with
    `shard`, only that worker's share of the training rows."""
    index = {n: i for i, n in enumerate(stream.names)}
    classes = {name: i for i, name in enumerate(spec.class_names)}

    def convert(rows):
        values = np.array(rows, dtype=object).T
        return ({c.name: c.values(values[index[c.name]]) for c in spec.features},
                np.array([classes[v] for v in values[index[spec.label]]], dtype=np.int32))

    def chunks():
        rows, k = [], -1
        for r, _, values in stream.rows([]):
            if r != role:
                continue
            k += 1
            if shard is None or role != "train" or k % shard[1] == shard[0]:
                rows.append(values)
            if len(rows) == CHUNK_ROWS:
                yield convert(rows)
                rows = []
        if rows:
            yield convert(rows)

    signature = ({c.name: tf.TensorSpec([None], DTYPES[c.dtype]) for c in spec.features},
                 tf.TensorSpec([None], tf.int32))
    return tf.data.Dataset.from_generator(chunks, output_signature=signature).unbatch()


def load_streamed(path: Path, label: str, plan: folders.CachePlan, *, validation_fraction: float, seed: int,
                  flags: dict[str, tuple[str, ...]], shard: tuple[int, int] | None = None) -> Datasets:
    """`load_table` of a table over the cache budget: two passes over the file (`survey`, then
    `fit_stream`), then each split a `stream_dataset`, cached on disk as `plan` says."""
    stream, rule = stream_of(path, label, validation_fraction, seed)
    counts, sample, skipped = survey(stream)
    class_names = _class_names(np.array(sorted(set().union(*counts.values())), dtype=object), label)
    columns, unparseable = fit_stream(stream, typed_columns(sample, label, flags))
    spec_input = TableInput(columns, label, class_names)
    num_examples = {role: sum(c.values()) for role, c in counts.items()}
    source = {"split": rule, "unparseable": {c.name: unparseable.get(c.name, 0) for c in spec_input.features
                                             if c.dtype == "float32"},
              "skipped": tablefile.RawTable(path, [], {}, skipped).skipped_report(), "cache": plan.to_json(),
              "read": "stream", "label_counts": {"train": {c: counts["train"][c] for c in class_names}},
              "types_from": {"sample_rows": len(sample), "of": num_examples["train"],
                             "rule": f"a seeded uniform sample (reservoir) of at most {SAMPLE_ROWS:,} training rows"},
              **({"shard": _shard_record(shard, num_examples["train"])} if shard else {})}
    spec = _spec(path, spec_input, stream_fingerprint(stream, rule), num_examples, source)
    size = plan.prepared_bytes / MEMORY_PER_FILE_BYTE
    print(f"The table ({size / 2**20:,.1f} MiB of file; about {plan.prepared_bytes / 2**20:,.1f} MiB in memory) "
          f"exceeds --cache-budget ({plan.budget_bytes / 2**20:,.1f} MiB): streaming it from the file. Splits "
          f"carved per row by sha256(seed:line number); column types from a sample of {len(sample):,} of the "
          f"{num_examples['train']:,} training rows, statistics from all of them in one streaming pass; "
          + (f"each split cached on disk in {plan.directory}." if plan.kind == "disk" else
             "not cached (not enough free disk): each epoch reads the file again."), flush=True)
    _announce(spec, spec_input)
    # The cache files are named by the fitted columns too: examples converted with other types
    # (another version's inference) are never read back.
    prefix = hashlib.sha256(repr(spec_input.to_json()).encode()).hexdigest()[:8]
    made = {}
    for role in ("train", "validation", "test"):
        part = shard if role == "train" else None
        made[role] = stream_dataset(spec_input, stream, role, part)
        if plan.kind == "disk":
            made[role] = made[role].cache(str(Path(plan.directory) / (
                f"{prefix}-{role}-shard{shard[0]}-of-{shard[1]}" if part else f"{prefix}-{role}")))
        rows = spec.source["shard"]["rows"] if part else num_examples[role]
        made[role] = made[role].apply(tf.data.experimental.assert_cardinality(rows))
    return Datasets(spec, made["train"], made["validation"], made["test"], cache_plan=plan)


def stream_fingerprint(stream: Stream, rule: dict) -> str:
    """A streamed table's version: its files' bytes, the label and the split rule."""
    digest = hashlib.sha256(repr((stream.label, sorted(rule.items(), key=str))).encode())
    for path, role in stream.sources:
        digest.update(f"{role}:".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"file-{digest.hexdigest()[:12]}"


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
