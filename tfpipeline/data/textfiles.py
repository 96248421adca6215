"""Text classification data on disk → labelled documents per split, with every bad input counted.

Three layouts (`read(path)` tells them apart):

    DIR/train/<class>/*.txt  [DIR/validation|val/<class>/*]  [DIR/test/<class>/*]   split folders
    DIR/<class>/*.txt                                                              flat folder
    FILE.csv | FILE.tsv,  or  DIR/train.csv [DIR/validation.csv] DIR/test.csv      table of rows

The folder layouts are the ones `keras.utils.text_dataset_from_directory` reads. Every file
under a class folder is read once here and checked: a file holding a NUL byte is binary, one
that is not valid UTF-8 is not text, one that is empty (or only whitespace) says nothing; each
is skipped and counted by reason, never decoded with replacement characters, because a model
that learned from mojibake would learn the encoding, not the words.

Splits the data does not give are carved by a hash threshold: a document goes to test when
sha256(seed:key) falls below the test fraction, to validation when it falls in the next
fraction, else to train. The key is a file's path relative to its root, or a row's text, so
adding files or rows never moves an existing one between splits (a rank-based carve would),
and identical rows (retweets, duplicated reviews) always land in the same split, so none of
them leaks from training into the held-out splits.

A table's text and label columns come from `--text-column` / `--label-column`, or are detected
when only one column can be meant (see `choose_columns`); anything ambiguous or missing is a
`UserError` that lists the columns found. A row without a label is an error too (it is not
clear whether the user meant to drop it), a row with an empty text is skipped and counted.

The read pass keeps what building the splits needs, not the documents themselves once they are
many (`Documents`): each document's label and role, the folder layouts' file paths, each table
row's role, and the dataset digest's records (a label and a 36-byte hash per document, spooled
to a temporary file). The texts are kept only while they fit `keep_bytes` (`text.load` passes
its cache budget); past it they stream from the files again (`text.py`). Tables are read as a
stream of rows too; detecting their columns keeps one hash per distinct value, not the values.
"""

from __future__ import annotations

import array
import csv
import dataclasses
import hashlib
import os
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tfpipeline.data import paths
from tfpipeline.errors import UserError

ROLES = ("train", "validation", "test")
SPLIT_FOLDERS = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}
TABLE_SUFFIXES = (".csv", ".tsv")
# Column names that say what they hold; checked before the data-driven guess.
TEXT_NAMES = ("text", "content", "body", "document", "sentence", "review", "message", "comment")
LABEL_NAMES = ("label", "labels", "class", "category", "target", "topic", "sentiment", "y")
SHOW_SKIPPED = 10  # skipped files listed by name in the log and metadata; the rest are counted
RECORDS_IN_MEMORY = 8 * 2**20  # the digest's records spill to a temporary file past this
_RECORD = struct.Struct("<I32s")  # a document's label and the sha256 of its text


class Documents:
    """What the read pass keeps of the documents it accepts, by role, in reading order: each
    one's label, its text while all texts together stay within `keep_bytes` (None: always;
    past it `texts` is None and the splits stream from the files), and the records of the
    dataset digest (`digest`)."""

    def __init__(self, keep_bytes: int | None = None):
        self.keep_bytes = keep_bytes
        self.labels: dict[str, list[int]] = {role: [] for role in ROLES}
        self.texts: dict[str, list[str]] | None = {role: [] for role in ROLES}
        self.text_bytes = 0  # UTF-8 bytes of every accepted document's text
        self._records = {role: tempfile.SpooledTemporaryFile(RECORDS_IN_MEMORY) for role in ROLES}

    def add(self, role: str, label: int, text: str) -> None:
        encoded = text.encode()
        self.text_bytes += len(encoded)
        self.labels[role].append(label)
        self._records[role].write(_RECORD.pack(label, hashlib.sha256(encoded).digest()))
        if self.texts is not None and self.keep_bytes is not None and self.text_bytes > self.keep_bytes:
            self.texts = None  # from here on the documents stream from the files
        if self.texts is not None:
            self.texts[role].append(text)

    def relabel(self, mapping: list[int]) -> None:
        """Renumber the labels (a table's: numbered as first seen while reading, then by class name)."""
        self.labels = {role: [mapping[v] for v in values] for role, values in self.labels.items()}
        for role, records in self._records.items():
            renumbered = tempfile.SpooledTemporaryFile(RECORDS_IN_MEMORY)
            records.seek(0)
            for chunk in iter(lambda r=records: r.read(_RECORD.size), b""):
                label, text_hash = _RECORD.unpack(chunk)
                renumbered.write(_RECORD.pack(mapping[label], text_hash))
            records.close()
            self._records[role] = renumbered

    def digest(self, limits: dict[str, int] | None = None) -> str:
        """The dataset's digest: each role's documents in order (the first `limits[role]` of
        them), each as its role, its label and the sha256 of its text. The same documents in
        the same splits give the same digest whether their texts were kept or not."""
        digest = hashlib.sha256()
        for role in ROLES:
            records = self._records[role]
            records.seek(0)
            for _ in range(min(len(self.labels[role]), (limits or {}).get(role, len(self.labels[role])))):
                label, text_hash = _RECORD.unpack(records.read(_RECORD.size))
                digest.update(f"{role}:{label}:".encode())
                digest.update(text_hash)
        return digest.hexdigest()[:12]


@dataclasses.dataclass
class TextData:
    """Labelled documents per role, and how they were found."""

    root: Path
    layout: str  # "split folders", "flat folder", "table" or "split tables"
    class_names: tuple[str, ...]
    documents: Documents
    skipped: list[tuple[str, str]]  # (file or row, reason)
    split_rule: dict
    columns: dict[str, str] = dataclasses.field(default_factory=dict)  # "text"/"label" -> column of a table
    # Where each document streams from when its text was not kept: the folder layouts' files,
    # by role, in the order of `labels`; a table layout's files (role given → path) and, per
    # file, the role of each row it keeps (an index into ROLES, in file order).
    files: dict[str, list[str]] | None = None
    tables: dict[str, Path] | None = None
    table_roles: dict[str, array.array] | None = None

    @property
    def texts(self) -> dict[str, list[str]] | None:
        """The documents by role, when the read pass kept them (within its `keep_bytes`)."""
        return self.documents.texts

    @property
    def labels(self) -> dict[str, list[int]]:
        return self.documents.labels

    @property
    def counts(self) -> dict[str, int]:
        return {role: len(labels) for role, labels in self.labels.items()}

    def skipped_summary(self) -> dict:
        """What metadata.json records: counts by reason and the first few names."""
        reasons = {}
        for _, why in self.skipped:
            reasons[why] = reasons.get(why, 0) + 1
        return {"count": len(self.skipped), "by_reason": reasons,
                "items": [name for name, _ in self.skipped[:SHOW_SKIPPED]]}


def hash_fraction(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by the seed and the key: where a document falls in the carve."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def carve_role(seed: int, key: str, fractions: dict[str, float]) -> str:
    """The role of one document: the roles in `fractions` take consecutive hash intervals from
    0 (test first, then validation); train takes the rest."""
    h, start = hash_fraction(seed, key), 0.0
    for role in ("test", "validation"):
        if role in fractions:
            if h < start + fractions[role]:
                return role
            start += fractions[role]
    return "train"


def check_text(data: bytes) -> tuple[str | None, str | None]:
    """(the text, None) for a usable document, else (None, the reason it is skipped)."""
    if b"\x00" in data:
        return None, "binary (holds NUL bytes)"
    try:
        text = data.decode("utf-8-sig")  # a UTF-8 byte-order mark is not part of the text
    except UnicodeDecodeError:
        return None, "not valid UTF-8"
    if not text.strip():
        return None, "empty"
    return text, None


def read(path: str | os.PathLike, *, validation_fraction: float, seed: int, text_column: str | None = None,
         label_column: str | None = None, keep_bytes: int | None = None) -> TextData:
    """Every labelled document under `path`, split into train, validation and test.

    Args:
        path: a folder (split or flat class folders, or train/test tables) or one CSV/TSV file.
        validation_fraction: the share carved for validation when the data has no validation
            split, and for test too when it has no test split.
        seed: fixes the carve.
        text_column, label_column: a table's columns; None: detected (`choose_columns`).
        keep_bytes: keep the texts while they total at most this many UTF-8 bytes (None: all);
            past it `TextData.texts` is None and the documents stream from `files`/`tables`.

    Returns:
        A `TextData`.

    Raises:
        UserError: no such path, no documents, a single class, missing or ambiguous columns,
            rows without a label.
    """
    if not 0.0 < validation_fraction < 0.5:
        raise UserError(f"--validation-fraction must be between 0 and 0.5 for a text dataset (the same share "
                        f"is carved for test when the data has no test split), got {validation_fraction}.")
    root = Path(path).expanduser().resolve()
    paths.require(root, "text")
    tables = _split_tables(root) if root.is_dir() else None
    if root.is_file() or tables:
        data = _read_tables(root, tables, (validation_fraction, seed), (text_column, label_column),
                            Documents(keep_bytes))
    else:
        data = _read_folders(root, validation_fraction, seed, Documents(keep_bytes))
    _check_classes(data)
    return data


# -- folders ----------------------------------------------------------------------------------

def _split_dirs(root: Path) -> dict[str, Path]:
    found = {}
    for role, names in SPLIT_FOLDERS.items():
        for name in names:
            if (root / name).is_dir():
                found[role] = root / name
                break
    return found if "train" in found else {}


def _class_dirs(directory: Path) -> list[Path]:
    return sorted((d for d in directory.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.name)


def _read_class_files(directory: Path, class_names, root: Path, skipped: list) -> Iterator[tuple[str, int, Path]]:
    """(text, label, file) of each usable file under `directory/<class>/`, one at a time."""
    for label, name in enumerate(class_names):
        folder = directory / name
        if not folder.is_dir():
            continue
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            relative = file.relative_to(root).as_posix()
            try:
                text, reason = check_text(file.read_bytes())
            except OSError as exc:
                text, reason = None, f"unreadable ({exc.strerror or exc})"
            if reason:
                skipped.append((relative, reason))
                continue
            yield text, label, file


def _read_folders(root: Path, validation_fraction: float, seed: int, documents: Documents) -> TextData:
    dirs = _split_dirs(root)
    layout = "split folders" if dirs else "flat folder"
    class_names = tuple(d.name for d in _class_dirs(dirs.get("train", root)))
    if not class_names:
        raise UserError(f"The text dataset {root} holds no class folders. Put each class's text files in a "
                        "folder named after the class (DIR/<class>/*.txt, or DIR/train/<class>/*.txt and "
                        "DIR/test/<class>/*.txt), or pass a CSV/TSV file.")
    skipped: list[tuple[str, str]] = []
    given = dirs or {"train": root}
    missing = {role: validation_fraction for role in ("test", "validation") if role not in given}
    files = {role: [] for role in ROLES}
    for role, directory in given.items():
        for text, label, file in _read_class_files(directory, class_names, root, skipped):
            target = carve_role(seed, file.relative_to(root).as_posix(), missing) if role == "train" else role
            documents.add(target, label, text)
            files[target].append(str(file))
    rule = _rule(given, missing, seed, "path relative to the dataset folder")
    return TextData(root, layout, class_names, documents, skipped, rule, files=files)


def _rule(given, missing: dict[str, float], seed: int, key: str) -> dict:
    return {"given": sorted(given), "carved": {role: share for role, share in missing.items()},
            "seed": seed, "rule": f"sha256(seed:{key}) below the test share: test; in the next "
                                  "validation share: validation; else train (stable as data is added)"}


def _check_classes(data: TextData) -> None:
    counts = {name: 0 for name in data.class_names}
    for label in data.labels["train"]:
        counts[data.class_names[label]] += 1
    total = sum(data.counts.values())
    skipped = f" ({len(data.skipped)} files or rows were skipped: {_reasons(data)})" if data.skipped else ""
    if total == 0:
        raise UserError(f"The text dataset {data.root} holds no usable documents{skipped}. Add UTF-8 text "
                        "files under class folders, or rows to the table.")
    present = [name for name, n in counts.items() if n]
    if len(present) < 2:
        raise UserError(f"The text dataset {data.root} has {len(present)} class with training documents "
                        f"({', '.join(present) or 'none'}){skipped}; classification needs at least two. "
                        "Add a folder (or label value) per class.")
    for role in ROLES:
        if not data.counts[role]:
            raise UserError(f"The text dataset {data.root} leaves no {role} documents ({total} in all); "
                            "add documents or give that split explicitly (a folder or table of its own).")


def _reasons(data: TextData) -> str:
    return ", ".join(f"{n} {why}" for why, n in data.skipped_summary()["by_reason"].items())


def report_skipped(data: TextData) -> None:
    """Say on stdout what was skipped and why (the metadata counts it too)."""
    if not data.skipped:
        return
    print(f"Skipped {len(data.skipped)} of the documents of {data.root} ({_reasons(data)}; counted in "
          "metadata.json, dataset.source.skipped):", flush=True)
    for name, reason in data.skipped[:SHOW_SKIPPED]:
        print(f"  {name}: {reason}", flush=True)
    if len(data.skipped) > SHOW_SKIPPED:
        print(f"  ... and {len(data.skipped) - SHOW_SKIPPED} more", flush=True)


# -- tables -----------------------------------------------------------------------------------

def _split_tables(root: Path) -> dict[str, Path]:
    found = {}
    for role, names in SPLIT_FOLDERS.items():
        for name in names:
            for suffix in TABLE_SUFFIXES:
                if (root / f"{name}{suffix}").is_file() and role not in found:
                    found[role] = root / f"{name}{suffix}"
    if found and "train" not in found:
        raise UserError(f"The text dataset {root} has {', '.join(p.name for p in found.values())} but no "
                        "train.csv (or train.tsv); the training rows must be in a table of their own.")
    return found


def table_rows(path: Path) -> Iterator[list[str]]:
    """The rows of a CSV or TSV file as a stream, the header first (its names stripped): tab-separated
    for `.tsv`, else sniffed from the first 64 KiB. Lines are split as `str.splitlines` splits them.

    Raises:
        UserError: the file cannot be read, is binary or not UTF-8, or holds no rows (raised as
            the stream reaches the problem).
    """
    try:
        handle = path.open("r", encoding="utf-8-sig", newline="")  # a UTF-8 byte-order mark is not text
    except OSError as exc:
        raise UserError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    with handle:
        try:
            dialect = _dialect(path, handle.read(65536))
            handle.seek(0)
            csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents are one field
            rows = csv.reader(_lines(path, handle), dialect)
            header = next(rows, None)
            if header is None:
                raise UserError(f"The table {path} is empty; it needs a header row naming its columns and rows "
                                "below it.")
            yield [name.strip() for name in header]
            yield from rows
        except UnicodeDecodeError:
            raise UserError(f"The table {path} is not valid UTF-8; save it as UTF-8 text (CSV or TSV with a "
                            "header row).") from None
        except OSError as exc:
            raise UserError(f"Cannot read {path}: {exc.strerror or exc}.") from None


def _dialect(path: Path, sample: str):
    if path.suffix.lower() == ".tsv":
        return csv.excel_tab
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;|")
    except csv.Error:
        return csv.excel


def _lines(path: Path, handle) -> Iterator[str]:
    """The file's lines, each split again as `str.splitlines(keepends=True)` splits a text (form
    feeds, U+2028 ...: what reading the whole text and splitting it gave)."""
    for line in handle:
        if "\x00" in line:
            raise UserError(f"The table {path} is binary (holds NUL bytes); save it as UTF-8 text (CSV or TSV "
                            "with a header row).")
        yield from line.splitlines(keepends=True)


def _read_tables(root: Path, tables, carve: tuple[float, int], columns, documents: Documents) -> TextData:
    validation_fraction, seed = carve
    given = tables or {"train": root}
    header = next(table_rows(given["train"]))
    text_col, label_col = choose_columns(header, _stats_if_needed(given["train"], header, columns), *columns,
                                         source=given["train"])
    missing = {role: validation_fraction for role in ("test", "validation") if role not in given}
    skipped: list[tuple[str, str]] = []
    numbers: dict[str, int] = {}  # label value -> its number while reading (first seen first)
    roles = {}
    for role, path in given.items():
        rows = table_rows(path)
        columns_of = next(rows)
        if columns_of != header:
            raise UserError(f"{path} has columns {', '.join(columns_of)}, {given['train']} has "
                            f"{', '.join(header)}; the tables of one dataset need the same columns.")
        roles[role] = array.array("b")
        for _, text, label in _rows(path, rows, header.index(text_col), header.index(label_col), skipped):
            target = carve_role(seed, text, missing) if role == "train" else role
            roles[role].append(ROLES.index(target))
            documents.add(target, numbers.setdefault(label, len(numbers)), text)
    values = {number: value for value, number in numbers.items()}
    class_names = tuple(sorted({values[n] for n in set(documents.labels["train"])}))
    unknown = sorted({values[n] for role in ("validation", "test") for n in set(documents.labels[role])}
                     - set(class_names))
    if unknown:
        raise UserError(f"Labels {', '.join(map(repr, unknown[:5]))} appear in the validation or test rows but never "
                        f"in the training rows of {root}; every class needs training examples.")
    index = {name: i for i, name in enumerate(class_names)}
    documents.relabel([index.get(values[n], 0) for n in range(len(values))])
    layout = "split tables" if tables else "table"
    return TextData(root, layout, class_names, documents, skipped, _rule(given, missing, seed, "row text"),
                    {"text": text_col, "label": label_col}, tables=dict(given), table_roles=roles)


def table_documents(data: TextData, role: str) -> Iterator[str]:
    """The texts of `role`'s documents of a table layout, read again from its files, in the
    order of `data.labels[role]`."""
    for given, path in data.tables.items():
        rows = table_rows(path)
        header = next(rows)
        text_at, label_at = header.index(data.columns["text"]), header.index(data.columns["label"])
        wanted = ROLES.index(role)
        for (_, text, _), target in zip(_rows(path, rows, text_at, label_at, []), data.table_roles[given]):
            if target == wanted:
                yield text


def _rows(path: Path, rows, text_at: int, label_at: int, skipped: list):
    """(row number, text, label) of the rows with a text; rows without a label are an error."""
    unlabelled = []
    for number, row in enumerate(rows, start=2):  # the header is line 1
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        label = row[label_at].strip() if label_at < len(row) else ""
        text = row[text_at] if text_at < len(row) else ""
        if not label:
            unlabelled.append(number)
        elif not text.strip():
            skipped.append((f"{path.name}:{number}", "empty"))
        else:
            yield number, text, label
    if unlabelled:
        shown = ", ".join(map(str, unlabelled[:10])) + (" ..." if len(unlabelled) > 10 else "")
        raise UserError(f"{len(unlabelled)} rows of {path} have no label (rows {shown}); give every row a label, "
                        "or remove the rows you do not want to train on.")


@dataclasses.dataclass
class ColumnStats:
    """What column detection needs of a table's training rows, gathered as they stream by: the
    rows, and per column the rows that have it, their total length, and one hash per distinct
    value (not the values: the text column's would be every document)."""

    rows: int
    present: list[int]
    lengths: list[int]
    distinct: list[set]


def column_stats(header: list[str], rows) -> ColumnStats:
    stats = ColumnStats(0, [0] * len(header), [0] * len(header), [set() for _ in header])
    for row in rows:
        stats.rows += 1
        for i, value in enumerate(row[:len(header)]):
            stats.present[i] += 1
            stats.lengths[i] += len(value)
            stats.distinct[i].add(hash(value))
    return stats


def _stats_if_needed(path: Path, header: list[str], columns) -> ColumnStats | None:
    """`column_stats` of the training table, unless both columns are named and present (then
    nothing needs them, and the table is read once less)."""
    if all(name is not None and name in header for name in columns):
        return None
    rows = table_rows(path)
    next(rows)
    return column_stats(header, rows)


def _describe(header, stats: ColumnStats) -> str:
    parts = []
    for i, name in enumerate(header):
        mean = stats.lengths[i] / max(1, stats.present[i])
        parts.append(f"{name!r} ({len(stats.distinct[i])} distinct values, {mean:.0f} characters on average)")
    return "; ".join(parts)


def choose_columns(header: list[str], stats: ColumnStats | None, text_column: str | None, label_column: str | None,
                   *, source: Path) -> tuple[str, str]:
    """The table's text and label columns: the named ones, else the only plausible ones.

    Without a name, a column called like a text (`TEXT_NAMES`) or a label (`LABEL_NAMES`) is
    taken when exactly one is; else the text column is the one whose values are much longer
    than every other column's, and the label column the only other one with between 2 and
    max(2, rows / 2) distinct values. `stats` (`column_stats` of the training rows) may be
    None only when both columns are named and in the header.

    Raises:
        UserError: a named column is not in the header, or no single column can be meant
            (the message lists every column with its distinct values and mean length).
    """
    for flag, name in (("--text-column", text_column), ("--label-column", label_column)):
        if name is not None and name not in header:
            raise UserError(f"{source} has no column {name!r} ({flag}); its columns are: "
                            f"{_describe(header, stats)}.")
    text = text_column or _by_name(header, TEXT_NAMES, label_column) or _longest(header, stats, label_column)
    label = label_column or _by_name(header, LABEL_NAMES, text) or _few_values(header, stats, text)
    for flag, found, what in (("--text-column", text, "text"), ("--label-column", label, "label")):
        if found is None:
            raise UserError(f"Cannot tell which column of {source} holds the {what}; pass {flag}. Its columns are: "
                            f"{_describe(header, stats)}.")
    if text == label:
        raise UserError(f"--text-column and --label-column both name {text!r} in {source}; they must differ.")
    return text, label


def _by_name(header, names, exclude) -> str | None:
    hits = [c for c in header if c.lower() in names and c != exclude]
    return hits[0] if len(hits) == 1 else None


def _longest(header, stats: ColumnStats, exclude) -> str | None:
    means = sorted(((stats.lengths[i] / max(1, stats.rows), c) for i, c in enumerate(header) if c != exclude),
                   reverse=True)
    if not means or (len(means) > 1 and means[0][0] < 2 * means[1][0]):
        return None
    return means[0][1]


def _few_values(header, stats: ColumnStats, exclude) -> str | None:
    limit = max(2, stats.rows // 2)
    hits = [c for i, c in enumerate(header) if c != exclude and 2 <= len(stats.distinct[i]) <= limit]
    return hits[0] if len(hits) == 1 else None
