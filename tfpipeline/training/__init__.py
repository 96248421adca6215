"""The training stage: settings, schedules, callbacks, the fit loop and what it needs.

Owns: `TrainSettings` and `settings_for`, the learning-rate schedule, the callbacks of every
training loop (`make_callbacks`, also a search trial's), `fit` with its rollback and retry
after a divergence (`FitResult`, `Recovery`), the optimizers (`optimizers`), losses
(`losses`), frozen layers (`freezing`), ensembles (`ensemble`), random layers' streams set
from (seed, epoch) for exact resume (`seeds`), and the list of private
Keras details the library relies on (`internals`).

May import: errors, runstate, data and models. Nothing in data, models or inputs imports it;
it imports nothing from tuning, distribute, export, report or serving.
"""

from tfpipeline.training.loop import (  # noqa: F401
    EARLY_STOPPING_STATE,
    EXPLOSION_FACTOR,
    RETRY_CLIPNORM,
    CosineCycles,
    DivergenceWatch,
    FitResult,
    Recovery,
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
    resumed_epoch,
    retry_settings,
    settings_for,
    weight_averaging_callbacks,
)
