"""What the sequence families on text share: the raw-string input with its token embeddings,
and the classifier head. The layer names are fixed here because the explanations (integrated
gradients over `embedding`) and the TensorBoard Projector look the embedding up by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras

if TYPE_CHECKING:
    from tfpipeline.inputs.text import TextInput


def embedded_tokens(text_input: TextInput, embed_dim: int) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The model's `text` input (raw strings) and its tokens' embeddings, `[batch, length, embed_dim]`."""
    text = keras.Input(shape=(), dtype="string", name="text")
    ids = text_input.vectorizer("int")(text)
    return text, keras.layers.Embedding(text_input.vocabulary_size, embed_dim, name="embedding")(ids)


def classifier(text: keras.KerasTensor, features: keras.KerasTensor, num_classes: int, *, dropout: float,
               name: str) -> keras.Model:
    """The model from `text` to logits over `features` (a document vector), with dropout first."""
    if dropout:
        features = keras.layers.Dropout(dropout, name="dropout")(features)
    logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(features)
    return keras.Model(text, logits, name=name)
