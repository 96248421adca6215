"""How an image looks in a report: prediction grids, integrated gradients and their pictures.

`ImageInput` (tfpipeline/inputs/image.py) calls these for TensorBoard's `predictions` and
`mistakes` images, for the `attributions` and `attributions_mistakes` images at the end of a
run, and for `predict --explain`. Everything here takes uint8 `[N, H, W, C]` images.

Integrated gradients: for an image x (uint8 pixels, integrated in float) and a class c,
integrated gradients (Sundararajan et al., 2017) attribute to each pixel i

    IG_i(x) = (x_i - b_i) * mean over a in (0, 1] of d p_c(b + a (x - b)) / d x_i

where b is a black image and p_c the softmax probability of c. The attributions of an image
add up (up to the Riemann-sum error) to p_c(x) - p_c(b): positive pixels raised the class's
probability on the way from black to the image, negative ones lowered it. The gradients come
from `tf.GradientTape` through the very model that is exported (its layers and weights), fed
float pixels in place of its uint8 input. docs/explanations.md says what the maps do and do
not show.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from tfpipeline.errors import UserError

SAMPLE_IMAGES = 40  # the fixed test sample shown with its predictions: 8 columns x 5 rows
GRID_COLUMNS = 8
CELL_SCALE = 3  # 28-pixel MNIST digits become 84 pixels: readable at a glance
MISTAKE_COLOR = (200, 0, 0)
CORRECT_COLOR = (20, 20, 20)

STEPS = 64  # Riemann steps along the path; the sum's error is checked in the tests (completeness)
SAMPLE = 16  # test images shown with attributions, the same every run (the first of the test split)
MISTAKES = 16  # the most confident mistakes shown
SCALE = 4  # 28-pixel digits become 112 pixels
_POSITIVE, _NEGATIVE = np.array([230, 30, 30]), np.array([30, 90, 230])


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: no system fonts needed


def _short(name, limit: int = 11) -> str:
    # ASCII only: the bundled font lacks symbols such as arrows and the ellipsis.
    name = str(name)
    return name if len(name) <= limit else name[: limit - 1] + "."


# --- predictions ------------------------------------------------------------------------------

def _as_rgb(image: np.ndarray) -> Image.Image:
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def prediction_grid(images, labels, predictions, class_names, columns: int = GRID_COLUMNS) -> np.ndarray:
    """Images with "pred / true" titles; a wrong prediction gets a red title and frame.

    Returns an RGB uint8 array (height, width, 3), the layout `tf.summary.image` takes.
    """
    count = len(images)
    height, width = images.shape[1] * CELL_SCALE, images.shape[2] * CELL_SCALE
    title, pad = 30, 6
    cell_w, cell_h = max(width, 84) + 2 * pad, height + title + pad
    rows = max(1, -(-count // columns))
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    for i in range(count):
        x0, y0 = (i % columns) * cell_w, (i // columns) * cell_h
        wrong = int(predictions[i]) != int(labels[i])
        color = MISTAKE_COLOR if wrong else CORRECT_COLOR
        draw.text((x0 + pad, y0 + 2), f"pred {_short(str(class_names[predictions[i]]))}", fill=color, font=font)
        draw.text((x0 + pad, y0 + 15), f"true {_short(str(class_names[labels[i]]))}", fill=color, font=font)
        tile = _as_rgb(images[i]).resize((width, height), Image.NEAREST)
        left = x0 + (cell_w - width) // 2
        canvas.paste(tile, (left, y0 + title))
        if wrong:
            draw.rectangle((left - 2, y0 + title - 2, left + width + 1, y0 + title + height + 1),
                           outline=MISTAKE_COLOR, width=2)
    return np.asarray(canvas)


def _write_image(tag: str, image: np.ndarray, step: int, description: str) -> None:
    tf.summary.image(tag, image[np.newaxis], step=step, description=description)


def log_samples(split: str, images, labels, predictions, class_names, step: int) -> None:
    """`predictions` (a fixed sample: the same images every time, so epochs and runs compare)
    and `mistakes` (the first misclassified ones), to the default summary writer."""
    sample = slice(0, min(SAMPLE_IMAGES, len(images)))
    _write_image("predictions",
                 prediction_grid(images[sample], labels[sample], predictions[sample], class_names),
                 step, f"The first {SAMPLE_IMAGES} {split} images: predicted and true class; mistakes in red.")
    wrong = np.flatnonzero(predictions != labels)[:SAMPLE_IMAGES]
    if len(wrong):
        _write_image("mistakes",
                     prediction_grid(images[wrong], labels[wrong], predictions[wrong], class_names),
                     step, f"The first {len(wrong)} misclassified {split} images.")


# --- attributions ----------------------------------------------------------------------------

def float_input_model(model: keras.Model) -> keras.Model:
    """The same layers and weights as `model`, on a float32 input of the same shape.

    The models take uint8 pixels (`models.layers.image_inputs`), and Keras casts whatever a
    functional model is called with to its input's dtype, which stops any gradient. Reusing
    every layer (not a copy) on a float input keeps exactly the exported computation. The
    members of an ensemble (tfpipeline/training/ensemble.py) are models on uint8 pixels themselves, so
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

def log_attributions(model: keras.Model, images: np.ndarray, labels: np.ndarray, class_names, step: int) -> None:
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
        titles = [f"pred {_short(class_names[predicted[i]], 6)} {confidence[i]:.2f} "
                  f"true {_short(class_names[labels[i]], 6)}"
                  for i in chosen]
        grid = attribution_grid(images[chosen], attributions, titles)
        tf.summary.image(tag, grid[np.newaxis], step=step, description=(
            f"{what}: each image and its integrated-gradients map for the predicted class (red raised its "
            "probability, blue lowered it; from a black image). See docs/explanations.md."))


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
