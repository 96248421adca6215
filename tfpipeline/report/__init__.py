"""The report stage: evaluation, TensorBoard and explanations.

Owns: evaluating a model on a split (`evaluation`), the run's TensorBoard logs — HParams,
sample images, confusion matrix, profile markers (`tensorboard`) — and attributions of
predictions (`explain`), each stage's wall time (`timing`) and the day's train rate, the
speed of a small reference convnet that a run's wall times are read against (`trainrate`).

May import: errors, inputs, data, models and training (an ensemble's members). It imports
nothing from tuning, export or serving.
"""
