"""The search stage: KerasTuner over the families' hyperparameters.
"""

from tfpipeline.tuning.engine import (  # noqa: F401
    ENV_ORACLE_IP,
    ENV_ORACLE_PORT,
    ENV_TUNER_ID,
    TRIAL_PATIENCE,
    PipelineHyperModel,
    SearchResult,
    choose,
    families_of,
    identity,
    role,
    search,
    trial_records,
    wait_for_chief,
    write_csv,
)
