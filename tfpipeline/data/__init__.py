"""The data stage: a TFDS dataset or the user's own files → unbatched, cached `tf.data` splits.

Owns: loading and splitting (`load`, which picks the kind's loader in `kinds`: images in
`datasets`, text in `text`/`textfiles`, tables in `table`, with `tablefile` (reading),
`tablecolumns` (column types and statistics) and `tablestream` (tables over the cache budget);
`Datasets`, `DatasetSpec`), batching
(`batched`, `Datasets.batched`), image folders and their cache plan (`folders`), decoding
and resizing (`imaging`), the training augmentation applied in the input pipeline
(`augmentation`), and the checks of a `--dataset` path made before TensorFlow starts (`paths`).

May import: errors (and inputs, for the spec it builds). It imports nothing from models,
training, tuning, distribute, export, report or serving: every later stage builds on it
(tests/test_layout.py checks this).
"""

from tfpipeline import lazy_exports

#: Environment variable naming the folder of manually downloaded files (the `--manual-dir` flag).
ENV_MANUAL_DIR = "TFPIPELINE_MANUAL_DIR"
#: TFDS's own variable for where prepared datasets live (the `--data-dir` flag).
ENV_DATA_DIR = "TFDS_DATA_DIR"

# The loaders import TensorFlow and TFDS: they load on first use, so a command's --help and its
# flag checks stay fast.
_LAZY = {"load": "tfpipeline.data.kinds"} | {name: "tfpipeline.data.datasets" for name in (
    "QUICK_EXAMPLES",
    "SHUFFLE_BUFFER_BYTES",
    "Datasets",
    "DatasetSpec",
    "batched",
    "dataset_name",
    "get_builder",
    "is_folder",
    "make_pipeline",
    "prepare",
    "resolve_data_dir",
    "resolve_manual_dir",
    "shuffle_buffer_for",
    "split_identity",
    "split_strings",
)}


__getattr__ = lazy_exports(__name__, _LAZY)
