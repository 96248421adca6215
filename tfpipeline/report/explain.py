"""Why did the model decide? Integrated gradients on the exported model's input pixels.

For an image x (uint8 pixels, integrated in float) and a class c, integrated gradients
(Sundararajan et al., 2017) attribute to each pixel i

    IG_i(x) = (x_i - b_i) * mean over a in (0, 1] of d p_c(b + a (x - b)) / d x_i

where b is a black image and p_c the softmax probability of c. The attributions of an image
add up (up to the Riemann-sum error) to p_c(x) - p_c(b): positive pixels raised the class's
probability on the way from black to the image, negative ones lowered it. The gradients come
from `tf.GradientTape` through the very model that is exported (its layers and weights), fed
float pixels in place of its uint8 input. docs/explanations.md says what the maps do and do
not show.

Used at the end of every run (`write_summaries`: TensorBoard images of a fixed test sample
and the most confident mistakes) and by `python -m tfpipeline.predict IMAGE --explain OUT.png`
(`load_exported` + `overlay_png`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from tfpipeline.errors import UserError

STEPS = 64  # Riemann steps along the path; the sum's error is checked in the tests (completeness)
SAMPLE = 16  # test images shown, the same every run (the first of the test split)
MISTAKES = 16  # the most confident mistakes shown
SCALE = 4  # 28-pixel digits become 112 pixels
_POSITIVE, _NEGATIVE = np.array([230, 30, 30]), np.array([30, 90, 230])


def float_input_model(model: keras.Model) -> keras.Model:
    """The same layers and weights as `model`, on a float32 input of the same shape.

    The models take uint8 pixels (`models.layers.image_inputs`), and Keras casts whatever a
    functional model is called with to its input's dtype, which stops any gradient. Reusing
    every layer (not a copy) on a float input keeps exactly the exported computation. The
    members of an ensemble (tfpipeline/ensemble.py) are models on uint8 pixels themselves, so
    each is taken on a float input too.
    """
    def reuse(layer):
        nested = isinstance(layer, keras.Model) and layer.inputs and layer.inputs[0].dtype != "float32"
        return float_input_model(layer) if nested else layer

    pixels = keras.Input(shape=model.input_shape[1:], dtype="float32", name="pixels")
    return keras.models.clone_model(model, input_tensors=pixels, clone_function=reuse)


def integrated_gradients(model: keras.Model, images: np.ndarray, classes: np.ndarray | None = None,
                         steps: int = STEPS, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel attributions (summed over channels) and the class each explains.

    Args:
        model: a model on uint8 images that returns logits (or its `float_input_model`).
        images: uint8 (or float pixel-valued) images, `(N, H, W, C)`.
        classes: the class to explain per image; None: the predicted one.
        steps: points on the straight path from the black baseline to each image.
        batch_size: images per compiled call (each is `steps` forward and backward passes).

    Returns:
        `(attributions (N, H, W) float32, classes (N,) int64)`.
    """
    float_model = model if model.inputs[0].dtype == "float32" else float_input_model(model)
    images = np.asarray(images, dtype=np.float32)
    if classes is None:
        classes = np.asarray(float_model.predict(images, batch_size=256, verbose=0)).argmax(-1)
    classes = np.asarray(classes, dtype=np.int64)
    # Midpoints of `steps` equal intervals: the midpoint rule, exact for a linear path integrand.
    alphas = tf.constant((np.arange(steps, dtype=np.float32) + 0.5) / steps)

    @tf.function(reduce_retracing=True)
    def attribute(batch, targets):
        path = alphas[:, None, None, None, None] * batch[None]  # (steps, n, H, W, C), from black
        flat = tf.reshape(path, tf.concat([[-1], tf.shape(batch)[1:]], axis=0))
        with tf.GradientTape() as tape:
            tape.watch(flat)
            probabilities = tf.nn.softmax(tf.cast(float_model(flat, training=False), tf.float32), axis=-1)
            chosen = tf.gather(probabilities, tf.tile(targets, [steps]), axis=1, batch_dims=1)
        gradients = tf.reshape(tape.gradient(chosen, flat), tf.shape(path))
        return tf.reduce_sum(batch * tf.reduce_mean(gradients, axis=0), axis=-1)

    parts = [attribute(tf.constant(images[i:i + batch_size]), tf.constant(classes[i:i + batch_size])).numpy()
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros(images.shape[:3], np.float32), classes


# --- pictures --------------------------------------------------------------------------------

def overlay(image: np.ndarray, attributions: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """RGB uint8: the image in gray, pixels that raised the class in red, lowered it in blue,
    with full color at the 99th percentile of |attribution| (one outlier does not wash out the rest)."""
    gray = np.asarray(image, dtype=np.float32)
    gray = gray.mean(-1) if gray.ndim == 3 else gray
    base = np.repeat((gray / max(gray.max(), 1.0) * 0.6 * 255)[..., None], 3, axis=-1)
    limit = np.percentile(np.abs(attributions), 99) or 1.0
    strength = np.clip(np.abs(attributions) / limit, 0, 1)[..., None]
    color = np.where(attributions[..., None] >= 0, _POSITIVE, _NEGATIVE)
    rgb = (base * (1 - strength) + color * strength).astype(np.uint8)
    return np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST))


def _font(size: int):
    return ImageFont.load_default(size=size)


def attribution_grid(images, attributions, titles: list[str], columns: int = 4) -> np.ndarray:
    """Pairs (image | its attribution overlay) with a title each, `columns` pairs per row."""
    tiles = [(np.asarray(Image.fromarray(_gray_rgb(img)).resize(
        (img.shape[1] * SCALE, img.shape[0] * SCALE), Image.NEAREST)), overlay(img, attr))
        for img, attr in zip(images, attributions)]
    h, w = tiles[0][0].shape[:2]
    cell_w, cell_h, title = 2 * w + 18, h + 26, 20
    rows = -(-len(tiles) // columns)
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, ((raw, colored), text) in enumerate(zip(tiles, titles)):
        x0, y0 = (i % columns) * cell_w + 4, (i // columns) * cell_h
        draw.text((x0, y0 + 3), text, fill=(20, 20, 20), font=_font(12))
        canvas.paste(Image.fromarray(raw), (x0, y0 + title))
        canvas.paste(Image.fromarray(colored), (x0 + w + 4, y0 + title))
    return np.asarray(canvas)


def _gray_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.uint8)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


# --- the end of a run ------------------------------------------------------------------------

def write_summaries(model: keras.Model, images: np.ndarray, labels: np.ndarray, class_names, step: int) -> None:
    """To the default summary writer: `attributions` (the first `SAMPLE` test images, the same
    every run) and `attributions_mistakes` (the `MISTAKES` misclassified images the model was
    surest of), each image beside its map for the predicted class."""
    probabilities = tf.nn.softmax(np.asarray(model.predict(images, batch_size=1000, verbose=0)), -1).numpy()
    predicted = probabilities.argmax(-1)
    confidence = probabilities.max(-1)
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:MISTAKES]
    float_model = float_input_model(model)
    for tag, chosen, what in (
        ("attributions", np.arange(min(SAMPLE, len(images))), f"The first {SAMPLE} test images"),
        ("attributions_mistakes", worst, f"The {len(worst)} test mistakes made with the highest confidence"),
    ):
        if not len(chosen):
            continue
        attributions, _ = integrated_gradients(float_model, images[chosen], predicted[chosen])
        titles = [f"pred {_short(class_names[predicted[i]])} {confidence[i]:.2f} true {_short(class_names[labels[i]])}"
                  for i in chosen]
        grid = attribution_grid(images[chosen], attributions, titles)
        tf.summary.image(tag, grid[np.newaxis], step=step, description=(
            f"{what}: each image and its integrated-gradients map for the predicted class (red raised its "
            "probability, blue lowered it; from a black image). See docs/explanations.md."))


def _short(name, limit: int = 6) -> str:
    name = str(name)
    return name if len(name) <= limit else name[: limit - 1] + "."


# --- predict --explain -----------------------------------------------------------------------

def load_exported(version_dir: Path) -> keras.Model:
    """The Keras model of an exported version: rebuilt from its metadata.json (family and
    hyperparameters) with the SavedModel's own variables, checked against its signature.

    The SavedModel's signature takes uint8 only (no gradient reaches it); the rebuilt model
    computes the same function and can be fed float pixels.
    """
    from tfpipeline import models
    from tfpipeline.training import ensemble

    version_dir = Path(version_dir)
    try:
        metadata = json.loads((version_dir / "metadata.json").read_text())
        family, hyperparameters = metadata["model"]["family"], metadata["model"]["hyperparameters"]
        num_classes = len(metadata["dataset"]["class_names"])
        members = int(metadata["model"].get("members", 1))
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"--explain needs the version's metadata.json (written by the pipeline's export); "
                        f"cannot read it in {version_dir}: {exc}") from None
    loaded = tf.saved_model.load(str(version_dir))
    serve = loaded.signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    hp = models.hyperparams(family, hyperparameters)
    model = ensemble.combine([models.build(family, tuple(spec.shape[1:]), num_classes, hp) for _ in range(members)])
    # Keras's exporter saves the model's variables in `model.variables` order. Names agree but
    # for the number Keras appends to auto-named ones (dropout's seed_generator_22 in one
    # process is seed_generator_3 in another), so compare them without it, and the shapes.
    saved, mine = list(loaded.variables), list(model.variables)
    if len(saved) != len(mine) or any(
            _unnumbered(a.name.removesuffix(":0")) != _unnumbered(b.path) or tuple(a.shape) != tuple(b.shape)
            for a, b in zip(saved, mine)):
        raise UserError(f"The SavedModel in {version_dir} does not hold the variables of a {family} model with "
                        f"its metadata's hyperparameters; --explain cannot rebuild it.")
    for source, variable in zip(saved, mine):
        variable.assign(source)
    probe = np.random.default_rng(0).integers(0, 256, (4, *spec.shape[1:]), dtype=np.uint8)
    expected = serve(**{next(iter(serve.structured_input_signature[1])): tf.constant(probe)})["probabilities"]
    got = tf.nn.softmax(model(probe, training=False), -1)
    if not np.allclose(expected.numpy(), got.numpy(), atol=1e-4):
        raise UserError(f"The model rebuilt from {version_dir}/metadata.json does not reproduce the SavedModel's "
                        "outputs; --explain cannot explain it.")
    return model


def _unnumbered(name: str) -> str:
    return re.sub(r"_\d+(?=/|$)", "", name)


def overlay_png(model: keras.Model, image: np.ndarray, out: Path, class_names=None) -> tuple[int, float]:
    """Write `out`: the image and its attribution overlay side by side; return (class, probability)."""
    probabilities = tf.nn.softmax(model(image[np.newaxis], training=False), -1).numpy()[0]
    predicted = int(probabilities.argmax())
    attributions, _ = integrated_gradients(model, image[np.newaxis], np.array([predicted]))
    name = class_names[predicted] if class_names else predicted
    grid = attribution_grid(image[np.newaxis], attributions, [f"class {name} p={probabilities[predicted]:.3f}"],
                            columns=1)
    try:
        Image.fromarray(grid).save(out)
    except (OSError, ValueError) as exc:
        raise UserError(f"Cannot write the explanation to {out}: {exc}") from None
    return predicted, float(probabilities[predicted])
