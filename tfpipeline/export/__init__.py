"""The export stage: verified SavedModel, promotion gate, TFLite and TF Serving's warm-up file.

Owns: writing, reloading and checking the SavedModel and publishing it as the next version
(`savedmodel`), the gate that compares it with the latest published version (`gate`), the
int8 TFLite export (`tflite`), and TF Serving's warm-up requests (`warmup`).

May import: errors, signatures, inputs, data, models and report (the gate's evaluation).
It imports nothing from training, tuning or serving.
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
