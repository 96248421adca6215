"""Random layers draw from (seed, epoch), so a resumed run drops out what an uninterrupted one would.

Keras keeps each random layer's position in its random stream (Dropout's `SeedGenerator`) in a
variable that `model.weights`, and so `BackupAndRestore`'s checkpoint, leaves out: a run resumed
at epoch 3 would start its dropout masks from the stream's beginning again, and end with other
weights than the run that was never interrupted. Instead of adding the streams to the checkpoint,
each epoch starts every stream at a position computed from the epoch's number; the stream's own
seed (its first component, set when the layer was built, from `--seed` under `--deterministic`)
is kept. A search trial gets the same property for free: its masks depend on its own seed and
epoch only.
"""

from __future__ import annotations

import keras
import numpy as np

# A stream's second component counts its draws (one per random layer call, so one per step):
# each epoch starts 2^20 draws after the last, more steps than an epoch takes, and the product
# stays within a 32-bit counter for 4,096 epochs.
_DRAWS_PER_EPOCH = 2**20
_STATE_NAME = "seed_generator_state"  # Keras's name for a SeedGenerator's variable


def seed_states(model: keras.Model) -> list:
    """The random streams' state variables of `model`'s layers (in `variables`, not `weights`)."""
    return [v for v in model.variables if v.path.rsplit("/", 1)[-1] == _STATE_NAME]


def start_epoch(model: keras.Model, epoch: int) -> None:
    """Put every random stream of `model` at the start of `epoch`'s draws."""
    for state in seed_states(model):
        seed = int(np.asarray(state.numpy()).reshape(-1)[0])
        state.assign(np.array([seed, epoch * _DRAWS_PER_EPOCH], dtype=state.dtype))


class EpochSeeds(keras.callbacks.Callback):
    """Calls `start_epoch` as each epoch begins (first in the callbacks: before anything trains)."""

    def on_epoch_begin(self, epoch, logs=None):
        start_epoch(self.model, epoch)
