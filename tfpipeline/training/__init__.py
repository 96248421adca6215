"""The training stage: settings, schedules, callbacks, the fit loop and what it needs.
"""

from tfpipeline.training.loop import (  # noqa: F401
    EXPLOSION_FACTOR,
    RETRY_CLIPNORM,
    CosineCycles,
    DivergenceWatch,
    TrainSettings,
    averaging_momentum,
    check_finite,
    check_optimizer_options,
    compile_model,
    cycle_epochs,
    default_verbosity,
    endless,
    epochs_completed,
    fit,
    learning_rate_schedule,
    make_callbacks,
    optimizer_options,
    optimizer_record,
    recovery_of,
    resume_message,
    retry_settings,
    settings_for,
    weight_averaging_callbacks,
)
