"""The four families on text: the same `--model` names, built on a `TextInput` instead of an image shape.

Each module has a `Hyperparams` dataclass (defaults chosen on validation accuracy), a
`build(text_input, num_classes, hp) -> keras.Model` that takes a batch of raw strings and returns
logits, and a `search_space(hp, text_input)`. Every model's first layer is the spec's `vectorize`
layer, so the vocabulary is inside the model and its export; the sequence families' next layer
is named `embedding` (integrated gradients start from its output, `inputs.textreport`).

`tfpipeline.models.family(name, kind="text")` picks these; the image families are untouched.
"""

from __future__ import annotations

from types import ModuleType

from tfpipeline.models.text import cnn, mlp, rnn, transformer

FAMILIES: dict[str, ModuleType] = {"mlp": mlp, "cnn": cnn, "rnn": rnn, "transformer": transformer}

#: The layer whose output integrated gradients attribute over, by family: the token embeddings,
#: or for the MLP the TF-IDF vector itself (it has no embeddings).
ATTRIBUTION_LAYER = {"mlp": "vectorize", "cnn": "embedding", "rnn": "embedding", "transformer": "embedding"}
