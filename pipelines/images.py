"""Your own images (or any TFDS dataset) end to end: `python -m pipelines.images --dataset DIR`
(or `tfpipeline-images`).

DIR holds one sub-folder of images per class (DIR/<class>/*, or DIR/train/<class>/* with
optional validation/ and test/); see docs/images.md.
"""

import sys

from tfpipeline import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, dataset=None)


if __name__ == "__main__":
    sys.exit(main())
