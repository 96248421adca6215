"""Model families for tables: the same names as the image families, built on a `TableInput`.

`build(name, table, num_classes, hp)` picks the table variant of a family; `models.build`
calls it when the dataset's input spec is a table. The MLP and the feature-tokenizer
transformer read the encoded columns (`encoder`); the CNN and the RNN are refused, since
neither has anything to work on in a row: a convolution assumes neighbouring values are
related (pixels), a recurrent net assumes an order (time steps), and a table's columns have
neither.
"""

from __future__ import annotations

from types import ModuleType

import keras

from tfpipeline.errors import UserError
from tfpipeline.models.table import mlp, transformer

FAMILIES: dict[str, ModuleType] = {"mlp": mlp, "transformer": transformer}
REFUSED = {
    "cnn": "a convolution assumes that neighbouring values are related, as pixels are, and a table's "
           "columns have no neighbourhood",
    "rnn": "a recurrent net reads its input as a sequence, and a table's columns have no order",
}


def family(name: str) -> ModuleType:
    """The table variant of family `name`.

    Raises:
        UserError: the family has no table variant (CNN, RNN) or is unknown.
    """
    if name in REFUSED:
        raise UserError(f"The {name.upper()} family does not take tables: {REFUSED[name]}. "
                        f"Use --model {' or --model '.join(FAMILIES)} on a table.")
    try:
        return FAMILIES[name]
    except KeyError:
        raise UserError(f"Unknown model family {name!r} for a table. Choose one of: {', '.join(FAMILIES)}.") from None


def build(name: str, table, num_classes: int, hp=None) -> keras.Model:
    module = family(name)
    return module.build(table, num_classes, hp or module.Hyperparams())
