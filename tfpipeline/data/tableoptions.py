"""The table flags as one small dataclass and one argparse group, for `config` and `cli` to
include: `--label-column`, `--numeric`, `--categorical`, `--ignore`, `--class-weight`,
`--no-baseline`. Kept beside the table loader so the two cannot drift apart; imports only
the standard library and `tfpipeline.errors`.
"""

from __future__ import annotations

import argparse
import dataclasses

from tfpipeline.errors import UserError

CLASS_WEIGHTS = ("none", "balanced")


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


@dataclasses.dataclass
class TableOptions:
    """How a table is read and measured (ignored for images).

    Attributes:
        label_column: the column to predict (required for a table).
        numeric, categorical, ignore: columns whose inferred type a flag overrides.
        class_weight: "balanced" weighs each class by n / (classes × its training count).
        baseline: train the gradient-boosted tree baseline on the same splits.
    """

    label_column: str | None = None
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    class_weight: str = "none"
    baseline: bool = True

    def flags(self) -> dict[str, tuple[str, ...]]:
        """The overrides as `tfpipeline.data.table.load_table` takes them."""
        return {"numeric": self.numeric, "categorical": self.categorical, "ignored": self.ignore}

    def validate(self, is_table: bool) -> None:
        """Raises UserError: a table without --label-column, or table flags on images."""
        if is_table and not self.label_column:
            raise UserError("A table needs --label-column COLUMN: the column whose values are the classes.")
        if self.class_weight not in CLASS_WEIGHTS:
            raise UserError(f"--class-weight must be one of {', '.join(CLASS_WEIGHTS)}, got {self.class_weight!r}.")
        given = [f for f, v in (("--label-column", self.label_column), ("--numeric", self.numeric),
                                ("--categorical", self.categorical), ("--ignore", self.ignore)) if v]
        if given and not is_table:
            raise UserError(f"{', '.join(given)} only apply to a table (a CSV/TSV file or a folder of them).")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The "tables" argument group; `options(args)` reads it back."""
    d = TableOptions()
    group = parser.add_argument_group("tables (a CSV/TSV file or a folder of train/validation/test files)")
    group.add_argument("--label-column", default=d.label_column, help="the column to predict (required for a table)")
    for flag in ("numeric", "categorical", "ignore"):
        group.add_argument(f"--{flag}", type=_names, default=(), metavar="COL[,COL...]",
                           help=f"treat these columns as {flag if flag != 'ignore' else 'not features'} "
                                "whatever their values look like")
    group.add_argument("--class-weight", choices=CLASS_WEIGHTS, default=d.class_weight,
                       help="balanced: weigh classes by the inverse of their training frequency (default: none)")
    group.add_argument("--no-baseline", dest="baseline", action="store_false",
                       help="skip the gradient-boosted tree baseline")


def options(args: argparse.Namespace) -> TableOptions:
    return TableOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TableOptions)})
