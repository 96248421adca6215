"""A table larger than `--cache-budget`, streamed from its file instead of read into memory:
the decision (`memory_plan`), the passes over the file and the `tf.data` splits they make.

A table is streamed when its files' size times `MEMORY_PER_FILE_BYTE` (an estimate of what the
rows take as Python strings) exceeds the budget (`tfpipeline.data.table.load_streamed` puts the
pieces together). One pass (`survey`) counts the rows and labels of each split and keeps a
seeded uniform sample of at most `SAMPLE_ROWS` training rows, from which the column types are
inferred; a second pass (`fit_stream`) fits the statistics and vocabularies on the whole
training split, chunk by chunk, with `tablecolumns.fit_column`'s own arithmetic (`column_stats`,
`merge_stats`, `fitted`); each split is then a `tf.data` generator over the file
(`stream_dataset`), cached on disk under the work dir (`stream_splits`). The in-memory carve is
seeded and stratified over all rows; a stream cannot hold them, so it carves per row
(`Stream.rows`), by sha256(seed:line number) against the shares (the text pipeline's
`textfiles.carve_role`), not stratified.

It imports `tablefile`, `tablecolumns`, `textfiles` (the carve), `folders` (the cache plan) and
the input spec; nothing from `table`, which calls it.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import tensorflow as tf

from tfpipeline.data import folders, tablefile, textfiles
from tfpipeline.data.tablecolumns import column_stats, fitted, merge_stats
from tfpipeline.errors import UserError
from tfpipeline.inputs.table import DTYPES, Column, TableInput

#: A table is streamed from its file, not read into memory, when its files' size times this
#: (a value read into memory is a Python string of ~50 bytes plus a pointer; in a file it is a
#: few characters and a comma) exceeds --cache-budget.
MEMORY_PER_FILE_BYTE = 10
#: A streamed table's column types are inferred from a seeded uniform sample of at most this
#: many training rows (its statistics from all of them).
SAMPLE_ROWS = 10_000
#: A streamed table's rows are fitted and converted this many at a time.
CHUNK_ROWS = 4096


def memory_plan(path: Path, identity: tuple, cache_budget: int | None, work_dir: str | Path) -> folders.CachePlan:
    """"memory" when the table read into memory (about `MEMORY_PER_FILE_BYTE` bytes per byte of
    its files) fits `cache_budget`; else "disk" (streamed, each split cached in a file under
    `<work_dir>/<name>/cache/<key>/`) or "none" (streamed each epoch: no room on disk).
    `identity`: what else fixes the splits' contents (label, fractions, seed, flags), for the key."""
    budget = folders.default_cache_budget() if cache_budget is None else int(cache_budget)
    files = [f for f in (tablefile.split_file(path, r) for r in ("train", "validation", "test")) if f] \
        if path.is_dir() else [path]
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


def stream_of(path: Path, label: str, validation_fraction: float, seed: int, *, test_fraction: float
              ) -> tuple[Stream, dict]:
    """The `Stream` of a file or folder and its split rule (for `dataset.source.split`); a single
    file's test share is `test_fraction` (`table.TEST_FRACTION`, as the in-memory carve's)."""
    rule = ("per row, no memory of the table: sha256(seed:line number) as a fraction in [0, 1); below "
            "the test share: test; in the next, validation's share: validation; else train (not stratified)")
    if path.is_dir():
        files = {role: tablefile.split_file(path, role) for role in ("train", "validation", "test")}
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
        carved = {"test": test_fraction, "validation": (1 - test_fraction) * validation_fraction}
        split = {"layout": "file", "file": str(path), "test_fraction": test_fraction,
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


def stream_splits(spec: TableInput, stream: Stream, plan: folders.CachePlan, rows: dict[str, int],
                  shard: tuple[int, int] | None = None) -> dict[str, tf.data.Dataset]:
    """Each split a `stream_dataset` of `rows[role]` examples (with `shard`, the training split is
    that worker's share), cached on disk as `plan` says."""
    # The cache files are named by the fitted columns too: examples converted with other types
    # (another version's inference) are never read back.
    prefix = hashlib.sha256(repr(spec.to_json()).encode()).hexdigest()[:8]
    made = {}
    for role in ("train", "validation", "test"):
        part = shard if role == "train" else None
        made[role] = stream_dataset(spec, stream, role, part)
        if plan.kind == "disk":
            made[role] = made[role].cache(str(Path(plan.directory) / (
                f"{prefix}-{role}-shard{shard[0]}-of-{shard[1]}" if part else f"{prefix}-{role}")))
        made[role] = made[role].apply(tf.data.experimental.assert_cardinality(rows[role]))
    return made


def stream_fingerprint(stream: Stream, rule: dict) -> str:
    """A streamed table's version: its files' bytes, the label and the split rule."""
    digest = hashlib.sha256(repr((stream.label, sorted(rule.items(), key=str))).encode())
    for path, role in stream.sources:
        digest.update(f"{role}:".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"file-{digest.hexdigest()[:12]}"
