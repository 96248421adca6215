"""Model families and the registry that maps `--model NAME` to a builder.

Each family is one short module with a `Hyperparams` dataclass (architecture and the
training settings that suit it, all with working defaults; `FamilyHyperparams` is what every
stage may rely on) and `build(input_shape, num_classes, hp) -> keras.Model`, an uncompiled
functional model that takes raw `uint8` images and returns logits. `search_space(kt_hp)`
declares the family's KerasTuner space with those defaults.

Text and tables have their own variants of the families that take them
(`tfpipeline.models.text`, `tfpipeline.models.table`): `family`, `hyperparams` and `build` pick
them from the input spec's kind. Without a kind, or with "image", everything is as it always was.

Owns: the families, their layers (`layers`) and search-space helpers (`space`).

May import: errors, data (the augmentation a family trains with) and inputs. It imports nothing
from training, tuning, distribute, export, report or serving (tests/test_layout.py checks this).
"""

# The image families' names: --model's choices. The registry (tfpipeline/models/registry.py)
# maps them to their modules; it imports Keras, so it loads on first use, which keeps a
# command's --help from starting TensorFlow.
FAMILY_NAMES = ("mlp", "cnn", "rnn", "transformer")


def __getattr__(name: str):
    import importlib

    registry = importlib.import_module("tfpipeline.models.registry")  # not `from . import`: it asks us
    try:
        return getattr(registry, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
