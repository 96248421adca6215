"""The export stage: verified SavedModel, promotion gate, TFLite and TF Serving's warm-up file.

Owns: writing, reloading and checking the SavedModel and publishing it as the next version
(`savedmodel`), the gate that compares it with the latest published version (`gate`), the
int8 TFLite export (`tflite`), and TF Serving's warm-up requests (`warmup`).

May import: errors, signatures, inputs, data, models and report (the gate's evaluation).
It imports nothing from training, tuning or serving.
"""

from tfpipeline.export.savedmodel import (  # noqa: F401
    HELD_DIR,
    PROBABILITY_TOLERANCE,
    TMP_PREFIX,
    WARMUP_EXAMPLES,
    Candidate,
    ExportResult,
    compare,
    ensure_writable,
    export_verified,
    hold,
    publish,
    savedmodel_predict,
    staged,
    versions,
    write_savedmodel,
)
