"""The search stage: KerasTuner over the families' hyperparameters.

Owns: the hypermodel that builds, compiles and fits a trial (`hypermodel`), KerasTuner's
oracles and tuners with the pipeline's additions (`oracles`, `tuners`), trial records and the
choice of the trial to train (`records`), a search over several machines (`distributed`), and
the stage that runs them (`stage.search`).

- Each family declares its space next to its builder (`search_space(kt_hp)` in
  tfpipeline/models/<family>.py) with the family's defaults as the space's defaults, and the
  first trial of each family *is* those defaults: the search starts from what an untuned run
  trains. `--model auto` adds a `family` choice and puts every family's space in a conditional
  scope (as AutoKeras does).
- Trials train on the first `search_fraction` of the training split for up to `max_epochs`
  epochs (Hyperband: `factor`), with a warmup + cosine schedule over the epochs each trial
  trains and early stopping, and are scored by their best validation accuracy.
- Resume: re-running an interrupted command reloads the search (KerasTuner, overwrite=False):
  finished trials keep their ids and scores; a trial killed half-way runs again from its start.
  The search lives in `<work-dir>/<dataset>/tune-<model>-<hash>/<run-id>/search/`
  (tfpipeline/runstate.py); each trial's curves and HParams session in
  `<logdir>/<dataset>/<run-id>/trials/<trial-id>/`.

May import: config, errors, runstate, data, models, training and report (a trial's TensorBoard
row). Nothing in data, models, training, export or serving imports it; the pipeline imports it
only when it searches (KerasTuner is slow to import).
"""

from tfpipeline.tuning.distributed import (  # noqa: F401
    ENV_ORACLE_IP,
    ENV_ORACLE_PORT,
    ENV_TUNER_ID,
    role,
    wait_for_chief,
)
from tfpipeline.tuning.hypermodel import PipelineHyperModel, TrialData, TrialSetup  # noqa: F401
from tfpipeline.tuning.records import choose, trial_records, write_csv  # noqa: F401
from tfpipeline.tuning.stage import (  # noqa: F401
    TRIAL_PATIENCE,
    SearchResult,
    families_of,
    identity,
    search,
)
from tfpipeline.tuning.tuners import make_tuner  # noqa: F401
