"""The export stage: verified SavedModel, promotion gate, TFLite and TF Serving's warm-up file.
"""

from tfpipeline.export.savedmodel import (  # noqa: F401
    BYTES_CHECK_EXAMPLES,
    BYTES_INPUT_NAME,
    BYTES_SIGNATURE,
    HELD_DIR,
    INPUT_NAME,
    SIGNATURE,
    TMP_PREFIX,
    Candidate,
    ExportResult,
    bytes_serving_function,
    check_bytes_signature,
    encode_png,
    ensure_writable,
    export_verified,
    hold,
    publish,
    savedmodel_predict,
    serving_function,
    signature_metadata,
    staged,
    versions,
    write_savedmodel,
)
