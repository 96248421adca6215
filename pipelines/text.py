"""Text classification end to end: `python -m pipelines.text --dataset PATH` (or `tfpipeline-text`).

PATH is a folder of class folders of .txt files (split or flat), a CSV/TSV file, or a folder of
train.csv [validation.csv] test.csv; the export takes raw strings. See docs/text.md.
"""

import sys

from tfpipeline import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, dataset=None, kind="text")


if __name__ == "__main__":
    sys.exit(main())
