"""MNIST end to end: `python -m pipelines.mnist --help` (or `tfpipeline-mnist`)."""

import sys

from tfpipeline import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, dataset="mnist")


if __name__ == "__main__":
    sys.exit(main())
