"""Your own images (or any TFDS dataset) end to end: `python -m pipelines.images --dataset DIR`.

DIR holds one sub-folder of images per class (DIR/<class>/*, or DIR/train/<class>/* with
optional validation/ and test/); see docs/images.md.
"""

import sys

from tfpipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(dataset=None))
