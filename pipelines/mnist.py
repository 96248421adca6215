"""MNIST end to end: `python -m pipelines.mnist --help`."""

import sys

from tfpipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(dataset="mnist"))
