"""Keras's Adam and AdamW, with a weight average that warms up.

Keras's weight average (`use_ema=True`) uses its fixed momentum m from the first step, so
after t steps the weights of step one still carry m**t of the average: in a short run
enough of the untrained weights to pull the evaluated and exported model far below the
trained one (docs/benchmarks.md). TF 1's `ExponentialMovingAverage` had
the fix, `num_updates`: momentum min(m, (1 + t) / (10 + t)) at step t, which averages about
the last tenth of the steps so far until m takes over. Keras's optimizers read their
`ema_momentum` attribute when they trace the update, so these subclasses make it that
expression of the step counter; everything else is Keras's.
"""

from __future__ import annotations

import keras

from tfpipeline.training import internals


class _AverageWarmup:
    """Mixin for a Keras optimizer: `ema_momentum` warms up with the step count."""

    @property
    def ema_momentum(self):
        target = self._target_ema_momentum
        # Before the step counter exists (during `__init__`), and in eager checks, the plain value.
        if not getattr(self, "use_ema", False) or not internals.has_step_counter(self):
            return target
        step = keras.ops.cast(self.iterations, "float32")
        return keras.ops.minimum(target, (1.0 + step) / (10.0 + step))

    @ema_momentum.setter
    def ema_momentum(self, value):
        self._target_ema_momentum = value

    def get_config(self):
        return {**super().get_config(), "ema_momentum": self._target_ema_momentum}


@keras.saving.register_keras_serializable(package="tfpipeline")
class Adam(_AverageWarmup, keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose weight average warms up (see the module docstring)."""


@keras.saving.register_keras_serializable(package="tfpipeline")
class AdamW(_AverageWarmup, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` whose weight average warms up (see the module docstring)."""
