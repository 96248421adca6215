"""The data stage: a TFDS dataset or the user's own files → unbatched, cached `tf.data` splits.
"""

from tfpipeline.data.datasets import (  # noqa: F401
    ENV_DATA_DIR,
    ENV_MANUAL_DIR,
    QUICK_EXAMPLES,
    SHUFFLE_BUFFER_BYTES,
    Datasets,
    DatasetSpec,
    batched,
    dataset_name,
    get_builder,
    is_folder,
    load,
    make_pipeline,
    prepare,
    resolve_data_dir,
    resolve_manual_dir,
    shuffle_buffer_for,
    split_strings,
)
