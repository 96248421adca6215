"""Where `--dataset` points: the checks that need only the name, made before TensorFlow starts.

A path to one's own data that is not there is the commonest mistake with it. `require` finds it
from the name alone (no TensorFlow, no TFDS), so the command answers in a fraction of a second
(`tfpipeline.cli`), and the loaders (`datasets`, `folders`, `textfiles`,
`table`) raise the same message if the path went away since. Imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path

from tfpipeline.errors import UserError

# What each kind's --dataset may be, said when nothing is at the path given.
_MISSING = {
    "image": ("The dataset folder {path} does not exist. Pass --dataset a folder of class sub-folders "
              "(DIR/<class>/*.jpg or DIR/train/<class>/*.jpg) or a TFDS dataset name."),
    "text": ("The text dataset {path} does not exist. Pass a folder of class folders of text files, or a "
             "CSV/TSV file, with --dataset."),
    "table": ("The table {path} does not exist. Pass a CSV/TSV file, or a folder holding train.csv and "
              "test.csv, with --dataset."),
}


def starts_like_a_path(name: str) -> bool:
    """Whether `--dataset name` starts as only a path can (`/`, `.`, `~`): no TFDS name does."""
    return name.startswith(("/", ".", "~"))


def require(path: str | Path, kind: str) -> None:
    """Raise `UserError` (the kind's message) when nothing is at `path`.

    Args:
        path: the `--dataset` value, or the path a loader resolved from it.
        kind: "image", "text" or "table": which message, naming what `--dataset` may be.

    Raises:
        UserError: nothing at `path`.
    """
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise UserError(_MISSING[kind].format(path=resolved))


def check_dataset(name: str, kind: str) -> None:
    """Refuse a `--dataset` that must be a path and is not there: any text or table dataset,
    and an image dataset that starts like a path (another name may be a TFDS name, which only
    TFDS can tell, or a folder beside the command: `datasets.is_folder`)."""
    if kind != "image" or starts_like_a_path(name):
        require(name, kind)
