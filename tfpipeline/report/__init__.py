"""The report stage: evaluation, TensorBoard and explanations.

Owns: evaluating a model on a split (`evaluation`), the run's TensorBoard logs — HParams,
sample images, confusion matrix, profile markers (`tensorboard`) — and attributions of
predictions (`explain`).

May import: errors, inputs, data, models and training (an ensemble's members). It imports
nothing from tuning, export or serving.
"""
