"""Tables end to end: `python -m pipelines.table --dataset FILE.csv --label-column COL` (or
`tfpipeline-table`).

The export takes one raw value per feature column, or tf.Examples; every run is measured
against a gradient-boosted tree baseline on the same split. See docs/tables.md.
"""

import sys

from tfpipeline import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, dataset=None, kind="table")


if __name__ == "__main__":
    sys.exit(main())
