"""A table's columns: each column's type inferred from its training values, and its statistics
or vocabulary fitted on them (`tfpipeline.data.table` loads the table; this decides what each
column is and what the model's first layers need to know of it).

Column types are inferred from the values (`infer_column`) and stated; `--numeric`,
`--categorical` and `--ignore` override them (`override`, `typed_columns`). Identifiers, dates
and free text are detected and left out with a note: a model that memorizes an identifier
learns nothing that generalizes, and dates and text need encodings of their own.

Fitting is split so that a table too large for memory (`tablestream`) is fitted with the same
arithmetic as one in memory: `column_stats` sums what a part of the training values says
(counts, means and squared deviations), `merge_stats` adds two parts, `fitted` turns the sum
into the column's mean and deviation or vocabulary. `fit_column` is the three on one part.

It imports `tablefile`, `tfpipeline.errors` and the input spec's `Column`, nothing of how the
rows were read, split or streamed: both of `table`'s paths call it alike.
"""

from __future__ import annotations

import collections
import dataclasses
import re

import numpy as np

from tfpipeline.data import tablefile
from tfpipeline.errors import UserError
from tfpipeline.inputs.table import CATEGORICAL, IGNORED, NUMERIC, Column

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
