"""Images: the input spec every stage after the data asks about an image model's input.

An image model takes uint8 pixels `[H, W, C]`. Its export has two signatures:

    serving_default   images       uint8  [-1, H, W, C]   the pixels, as the model takes them
    serving_bytes     image_bytes  string [-1]            encoded JPEG/PNG/GIF/BMP files of any
                                                          size, decoded, converted and resized in
                                                          the graph by `imaging.prepare` (what the
                                                          folder datasets' `tf.data` map runs)

Both return `classes` and `probabilities`. `predict` sends a user's files as they are to
`serving_bytes` when the model has it (the model decodes and resizes them exactly as in
training), and otherwise converts them here (PIL) to the signature's pixels. The warm-up
file holds one request per signature; TFLite calibrates on training images. The pictures
TensorBoard and `predict --explain` show are drawn by `image_report`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tfpipeline import signatures as names
from tfpipeline.errors import ExportVerificationError, UserError
from tfpipeline.inputs import Examples, InputInfo, InputSpec, register

# Test images sent through serving_bytes as PNG files by export verification.
BYTES_CHECK_EXAMPLES = 16
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # PIL's mode for a channel count


@register
@dataclasses.dataclass(frozen=True)
class ImageInput(InputSpec):
    """uint8 images `[height, width, channels]`.

    Args:
        height, width: the model's input size; None (any size) only for a spec read from a
            server's signature, which `predict` then leaves to the signature to check.
        channels: 1 (grayscale) or 3 (RGB); None as for height and width.
    """

    height: int | None
    width: int | None
    channels: int | None
    kind: ClassVar[str] = "image"

    @classmethod
    def of(cls, shape: Sequence[int]) -> ImageInput:
        """The spec of images shaped `(height, width, channels)`."""
        height, width, channels = (int(d) for d in shape)
        return cls(height, width, channels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """`(height, width, channels)`: the Keras model's input shape."""
        return (self.height, self.width, self.channels)

    # -- identity ---------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"kind": self.kind, "height": self.height, "width": self.width, "channels": self.channels}

    @classmethod
    def from_json(cls, record: dict) -> ImageInput:
        return cls(record["height"], record["width"], record["channels"])

    @classmethod
    def from_signature(cls, inputs: dict[str, InputInfo]) -> ImageInput | None:
        """An image spec when the signature's single input is numeric `[batch, H, W, C]`."""
        if len(inputs) != 1:
            return None
        (info,) = inputs.values()
        if info.shape is None or len(info.shape) != 4 or info.dtype.kind not in "biuf":
            return None
        return cls(*info.shape[1:])

    # -- export -----------------------------------------------------------------------------
    def signatures(self, model) -> dict[str, Any]:
        pixels = serving_function(model, self.shape)
        return {names.DEFAULT: pixels, names.IMAGE_BYTES: bytes_serving_function(pixels, self.shape)}

    def request(self, examples: Examples) -> dict[str, np.ndarray]:
        return {names.IMAGES: np.asarray(examples)}

    def verify(self, loaded, examples: Examples) -> None:
        check_bytes_signature(loaded, examples[:BYTES_CHECK_EXAMPLES])

    def signature_metadata(self, examples: Examples) -> dict:
        checked = min(len(examples), BYTES_CHECK_EXAMPLES)
        return {
            names.DEFAULT: {"input": names.IMAGES, "dtype": "uint8", "shape": [-1, *self.shape]},
            names.IMAGE_BYTES: {"input": names.IMAGE_BYTES_INPUT, "dtype": "string", "shape": [-1],
                                "channels": self.channels,
                                "resize": f"imaging.resize to {self.height}x{self.width} "
                                          "(area when shrinking, else bilinear)",
                                "verified_on": f"{checked} test images as PNG"},
        }

    def warmup_requests(self, examples: Examples) -> dict[str, dict[str, np.ndarray]]:
        return {names.DEFAULT: self.request(examples),
                names.IMAGE_BYTES: {names.IMAGE_BYTES_INPUT: encode_png(examples)}}

    def calibration(self, examples: Examples) -> Iterator[dict[str, np.ndarray]]:
        for image in examples:
            yield {names.IMAGES: image[np.newaxis]}

    # -- predict ----------------------------------------------------------------------------
    def read(self, sources: Sequence[str], signature_inputs: dict[str, InputInfo]) -> tuple[list[str], dict]:
        """Image files → the request: their bytes for a string input, else their pixels
        converted to the input's channels, size and dtype (PIL, bilinear)."""
        if len(signature_inputs) != 1:
            raise UserError(f"The signature has inputs {sorted(signature_inputs)}; images need exactly one")
        ((name, info),) = signature_inputs.items()
        paths = [Path(source) for source in sources]
        if info.dtype.kind in "OSU":  # encoded files: the model decodes and resizes them
            return [str(p) for p in paths], {name: np.array([read_file_bytes(p) for p in paths], dtype=object)}
        if info.shape is None or len(info.shape) != 4:
            shape = "unknown" if info.shape is None else list(info.shape)
            raise UserError(f"Input '{name}' has shape {shape}; this command handles image inputs [batch, H, W, C]")
        _, height, width, channels = info.shape
        target = ImageInput(height or self.height, width or self.width, channels or self.channels)
        images = [load_image(p, target, info.dtype) for p in paths]
        return [str(p) for p in paths], {name: np.stack(images)}

    def choose_signature(self, available: Sequence[str]) -> str:
        return names.IMAGE_BYTES if names.IMAGE_BYTES in available else names.DEFAULT

    def random_examples(self, count: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 256, (count, *self.shape), dtype=np.uint8)

    # -- report -----------------------------------------------------------------------------
    def log_samples(self, split: str, examples: Examples, labels: np.ndarray, predictions: np.ndarray,
                    class_names: Sequence[str], step: int) -> None:
        from tfpipeline.inputs import image_report

        image_report.log_samples(split, examples, labels, predictions, class_names, step)

    def log_attributions(self, model, examples: Examples, labels: np.ndarray, class_names: Sequence[str],
                         step: int) -> None:
        from tfpipeline.inputs import image_report

        image_report.log_attributions(model, examples, labels, class_names, step)

    def explain(self, model, source: str, out: Path, class_names: Sequence[str]) -> str:
        from tfpipeline.inputs import image_report

        image = load_image(Path(source), self, np.dtype("uint8"))
        predicted, probability = image_report.overlay_png(model, image, out, class_names)
        return (f"{source}: class {class_names[predicted]} (probability {probability:.4f}); "
                f"attributions written to {out}")


# -- the signatures -----------------------------------------------------------------------------

def serving_function(model, input_shape):
    """The `serving_default` signature: raw uint8 images in, probabilities and classes out."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.uint8, name=names.IMAGES)])
    def serve(images):
        logits = tf.cast(model(images, training=False), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        return {
            names.PROBABILITIES: probabilities,
            names.CLASSES: tf.argmax(probabilities, axis=-1, output_type=tf.int64),
        }

    return serve


def bytes_serving_function(pixels, input_shape):
    """The `serving_bytes` signature: encoded image files in, the same outputs as `serving_default`.

    A string that is not a JPEG/PNG/GIF/BMP file (or is cut short) fails the call with
    InvalidArgumentError naming what was expected; a server answers that request with an
    error and goes on serving.

    Args:
        pixels: the `serving_default` function (`serving_function`); called on the decoded
            images, so the model is traced once for both signatures.
        input_shape: (height, width, channels) of the model's input.

    Returns:
        A `tf.function` taking `image_bytes`, a string `[batch]` tensor.
    """
    import tensorflow as tf

    from tfpipeline.data.imaging import prepare  # the module alone: data's hub imports this one

    height, width, channels = (int(d) for d in input_shape)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=names.IMAGE_BYTES_INPUT)])
    def serve_bytes(image_bytes):
        images = tf.map_fn(
            lambda encoded: prepare(encoded, (height, width), channels),
            image_bytes,
            fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8),
        )
        return pixels(images)

    return serve_bytes


def encode_png(images: np.ndarray) -> np.ndarray:
    """uint8 `[n, H, W, C]` → a `[n]` array of PNG files' bytes (lossless: same pixels back)."""
    import tensorflow as tf

    return np.array([tf.io.encode_png(image).numpy() for image in images], dtype=object)


def check_bytes_signature(loaded, images: np.ndarray) -> None:
    """`serving_bytes` on `images` sent as PNG files must give `serving_default`'s classes and
    probabilities.

    Args:
        loaded: the reloaded SavedModel (`tf.saved_model.load`).
        images: a few test images, uint8 `[n, H, W, C]`.

    Raises:
        ExportVerificationError: the signature is missing or its outputs differ.
    """
    import tensorflow as tf

    if names.IMAGE_BYTES not in loaded.signatures:
        raise ExportVerificationError(f"the SavedModel has no {names.IMAGE_BYTES} signature")
    pixels = loaded.signatures[names.DEFAULT](**{names.IMAGES: tf.constant(images)})
    encoded = loaded.signatures[names.IMAGE_BYTES](**{names.IMAGE_BYTES_INPUT: tf.constant(encode_png(images))})
    if not np.array_equal(pixels[names.CLASSES].numpy(), encoded[names.CLASSES].numpy()) or not np.allclose(
        pixels[names.PROBABILITIES].numpy(), encoded[names.PROBABILITIES].numpy(), atol=1e-5
    ):
        raise ExportVerificationError(
            f"{names.IMAGE_BYTES} on {len(images)} test images sent as PNG files does not give the "
            f"outputs of {names.DEFAULT} on their pixels"
        )


# -- a user's files -----------------------------------------------------------------------------

def load_image(path: Path, target: ImageInput, dtype: np.dtype) -> np.ndarray:
    """An image file as `[H, W, C]` pixels of `dtype`: converted to `target.channels`
    (1 when unknown) and resized to `target`'s height and width (bilinear) where known.

    Raises:
        UserError: the file cannot be read as an image, or the channel count is not 1, 3 or 4.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = _MODES.get(target.channels or 1)
            if mode is None:
                raise UserError(f"The model wants {target.channels} channels; images have 1, 3 or 4")
            image = image.convert(mode)
            size = (target.width or image.width, target.height or image.height)
            if image.size != size:
                image = image.resize(size, Image.Resampling.BILINEAR)
            pixels = np.asarray(image)
    except (FileNotFoundError, IsADirectoryError, UnidentifiedImageError, OSError) as exc:
        raise UserError(f"Cannot read image {path}: {exc}") from None
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    return pixels.astype(dtype)


def read_file_bytes(path: Path) -> bytes:
    """The bytes of an image file, as `serving_bytes` takes them.

    Raises:
        UserError: the file cannot be read or is empty.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"Cannot read image {path}: {exc.strerror or exc}") from None
    if not data:
        raise UserError(f"Image {path} is empty (0 bytes)")
    return data
