"""Reading a CSV or TSV file into columns of strings, with missing values and bad rows counted.

This is the lowest layer of the tabular input: it knows the file format and nothing about
column types. Every value is kept as the stripped string the file holds, or None when it is
missing (`MISSING_TOKENS`), so the type inference (`tfpipeline.data.tablecolumns`), the predict
command and the tests all read a file the same way. A row with more or fewer fields than the
header is skipped (it cannot be assigned to columns with any confidence) and counted with its
line number; blank lines are not rows. `read` holds a file in memory; `rows_of` yields the same
rows one at a time, for a table larger than the cache budget; `split_file` finds a folder's
train/validation/test file.

It imports only the standard library, NumPy and `tfpipeline.errors`, so the input spec
(`tfpipeline.inputs.table`) can read a user's rows for `predict` without the data stage.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from tfpipeline.errors import UserError

#: Values that mean "missing", compared case-insensitively after stripping spaces.
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
#: How many skipped rows a report names by line number.
SHOW_SKIPPED = 5


@dataclasses.dataclass
class RawTable:
    """A file's header and its values by column (str, or None when missing).

    Attributes:
        path: the file read.
        names: the header, in file order.
        values: column name -> object array of str or None, one per kept row.
        skipped: (line number, reason) for each row left out.
    """

    path: Path
    names: list[str]
    values: dict[str, np.ndarray]
    skipped: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(next(iter(self.values.values()))) if self.values else 0

    def take(self, indices: np.ndarray) -> RawTable:
        """The rows at `indices`, in that order (skipped rows are not carried)."""
        return RawTable(self.path, self.names, {k: v[indices] for k, v in self.values.items()})

    def skipped_report(self) -> dict:
        """What metadata.json records about the rows left out."""
        return {"count": len(self.skipped), "rule": "rows with the wrong number of fields are skipped",
                "rows": [f"line {line}: {why}" for line, why in self.skipped[:SHOW_SKIPPED]]}


def delimiter_for(path: Path) -> str:
    """Tab for `.tsv`/`.tab` files, else a comma."""
    return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","


def is_missing(value: str | None) -> bool:
    return value is None or value.strip().lower() in MISSING_TOKENS


def read(path: str | Path) -> RawTable:
    """Read a CSV/TSV file with a header row.

    Args:
        path: the file; `.tsv` and `.tab` files are tab-separated, others comma-separated.

    Returns:
        The `RawTable`: values stripped, missing values as None, rows with the wrong number of
        fields skipped and listed.

    Raises:
        UserError: the file does not exist or cannot be read, is empty, has a header with an
            empty or repeated column name, or has no data rows.
    """
    path = Path(path).expanduser()
    names = header(path)
    skipped: list[tuple[int, str]] = []
    rows = [values for _, values in rows_of(path, len(names), skipped)]
    if not rows:
        raise UserError(f"The table file {path} has a header ({', '.join(names)}) but no data rows"
                        + (f" that could be read ({len(skipped)} rows had the wrong number of fields)"
                           if skipped else "") + ".")
    columns = np.array(rows, dtype=object).T
    return RawTable(path, names, {name: columns[i] for i, name in enumerate(names)}, skipped)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator:
    """A `csv.reader` of `path`; a file that cannot be read or decoded is a `UserError`."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            yield csv.reader(handle, delimiter=delimiter_for(path))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"Cannot read the table file {path}: {exc}. Pass a UTF-8 CSV or TSV file.") from exc


def header(path: Path) -> list[str]:
    """The column names of a CSV/TSV file (checked: present, none empty, none repeated)."""
    if not path.is_file():
        raise UserError(f"The table file {path} does not exist. Pass a CSV/TSV file, or a folder holding "
                        "train.csv and test.csv (and optionally validation.csv), with --dataset.")
    with _opened(path) as reader:
        first = next(reader, None)
    if first is None:
        raise UserError(f"The table file {path} is empty: it needs a header row naming the columns, "
                        "then one row per example.")
    names = [name.strip() for name in first]
    _check_header(path, names)
    return input_names(names)


def split_file(folder: Path, role: str) -> Path | None:
    """The file of a folder that holds the split `role` (`train.csv`, or `.tsv`), if any."""
    return next((folder / f"{role}{ext}" for ext in (".csv", ".tsv") if (folder / f"{role}{ext}").is_file()), None)


def input_name(column: str) -> str:
    """A column's name as a model input: letters, digits, `_`, `.` and `-` kept, anything else
    (`/`, spaces, ...) `_`, since Keras layer names and SavedModel signature arguments take no
    other characters; `c` in front of a name that starts with none of them. A header read from a
    file, the label and the --numeric/--categorical/--ignore flags all go through it, so either
    spelling of a column names it (`od280/od315` or `od280_od315`)."""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", column.strip())
    return name if re.match(r"[A-Za-z0-9.]", name) else f"c{name}"


def input_names(columns: list[str]) -> list[str]:
    """`input_name` of each column, made unique (`_2`, `_3`, ... after a name seen before)."""
    names: list[str] = []
    for column in columns:
        name, n = input_name(column), 1
        while name in names:
            n += 1
            name = f"{input_name(column)}_{n}"
        names.append(name)
    return names


def rows_of(path: Path, width: int, skipped: list[tuple[int, str]]) -> Iterator[tuple[int, list]]:
    """The data rows of a file, one at a time: (line number, values, None when missing). Rows
    with other than `width` fields are appended to `skipped` instead; blank lines are not rows.
    What `read` holds in memory, and what a table larger than the cache budget streams."""
    with _opened(path) as reader:
        next(reader, None)  # the header
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            if len(row) != width:
                skipped.append((reader.line_num, f"{len(row)} fields, the header has {width}"))
                continue
            yield reader.line_num, [None if is_missing(v) else v.strip() for v in row]


def _check_header(path: Path, names: list[str]) -> None:
    if any(not name for name in names):
        raise UserError(f"The header of {path} has an empty column name (columns: {', '.join(names)}). "
                        "Name every column.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"The header of {path} repeats the column name(s) {', '.join(repeated)}. "
                        "Give every column its own name.")


def to_float(value: str | None) -> float:
    """A value as a float; NaN when missing or not a number."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except ValueError:
        return math.nan


def parse_floats(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Float32 values (NaN when missing) and how many present values were not numbers."""
    out = np.array([to_float(v) for v in values], dtype=np.float32)
    present = np.array([v is not None for v in values], dtype=bool)
    return out, int((present & np.isnan(out)).sum())
