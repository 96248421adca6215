"""The export stage: verified SavedModel, promotion gate, TFLite and TF Serving's warm-up file.
"""

from tfpipeline.export.savedmodel import (  # noqa: F401
    HELD_DIR,
    TMP_PREFIX,
    WARMUP_EXAMPLES,
    Candidate,
    ExportResult,
    ensure_writable,
    export_verified,
    hold,
    publish,
    savedmodel_predict,
    staged,
    versions,
    write_savedmodel,
)
