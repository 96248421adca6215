"""`data.load`: the loader of each kind of input, chosen by `kind`.

Images come from TFDS or a folder (`datasets.load`), text from folders of files or tables of
documents (`text.load`), tables from CSV/TSV files (`table.load_table`). Every loader returns the
same `Datasets`, with the kind's input spec on `spec.input`; nothing after the data stage asks
which loader ran.
"""

from __future__ import annotations

from tfpipeline.data import datasets
from tfpipeline.errors import UserError


def load(name: str = "mnist", *, kind: str = "image", text_column: str | None = None,
         label_column: str | None = None, table_flags: dict[str, tuple[str, ...]] | None = None,
         **common) -> datasets.Datasets:
    """Train / validation / test datasets of `name` read as `kind`.

    Args:
        name: a TFDS name or a folder of images; for text and tables a folder or a CSV/TSV file.
        kind: "image", "text" or "table".
        text_column, label_column: a text table's columns (None: detected); a table's label
            column (required).
        table_flags: a table's type overrides, role → column names (`config.TableOptions.flags`).
        **common: `datasets.load`'s keywords; text and tables read `validation_fraction`,
            `quick`, `seed`, `cache_budget`, `work_dir` and `shard` of them (a corpus or table
            over the budget streams from its files; `text.load`, `table.load_table`).

    Returns:
        `Datasets` whose `spec.input` is the kind's input spec.

    Raises:
        UserError: the data cannot be read as `kind` (the message says why and what to fix).
    """
    if kind == "image":
        return datasets.load(name, **common)
    shared = {key: common[key] for key in ("validation_fraction", "quick", "seed") if key in common}
    # Over the cache budget text and tables stream from their files; `shard`: a worker's share.
    streaming = {key: common[key] for key in ("cache_budget", "work_dir", "shard") if key in common}
    if kind == "text":
        from tfpipeline.data import text

        return text.load(name, text_column=text_column, label_column=label_column, **shared, **streaming)
    if kind == "table":
        from tfpipeline.data import table

        if not label_column:
            raise UserError("A table needs --label-column COLUMN: the column whose values are the classes.")
        return table.load_table(name, label_column, flags=table_flags, **shared, **streaming)
    raise UserError(f"Unknown input kind {kind!r}; use one of image, text, table.")
