"""Encoded image bytes → the model's `uint8 [H, W, C]` input, in TensorFlow ops only.

One function, `prepare`, turns a JPEG/PNG/GIF/BMP file's bytes into the pixels a model
takes. The folder datasets' `tf.data` map calls it for training and evaluation, and the
exported `serving_bytes` signature calls the same function inside the SavedModel, so a
client that sends the raw file gets exactly the pixels the model was evaluated on.
"""

from __future__ import annotations

import tensorflow as tf

#: File name endings read as images (Keras's directory loader's list; `tf.io.decode_image` reads them all).
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")

# The first bytes of each format tf.io.decode_image reads (JPEG, PNG, GIF, BMP). Checked
# first so an undecodable string gets a message that says what was expected.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


def check_format(encoded: tf.Tensor) -> tf.Operation:
    """An assertion that `encoded` starts like a JPEG, PNG, GIF or BMP file, whose message
    says so (instead of the decoder's "Unknown image file format")."""
    known = tf.reduce_any([tf.strings.substr(encoded, 0, len(m)) == m for m in _MAGIC])
    return tf.debugging.Assert(
        known,
        ["Not an image this model can decode: expected the bytes of a JPEG, PNG, GIF or BMP file; got",
         tf.strings.length(encoded), "bytes starting with", tf.strings.substr(encoded, 0, 8)],
        summarize=1,
    )


def decode(encoded: tf.Tensor, channels: int) -> tf.Tensor:
    """Decode one encoded image to `uint8 [h, w, channels]` (its own size).

    Grayscale images become RGB by repeating the channel, colour images become grayscale
    by luminance, and an alpha channel is dropped. Animated GIFs give their first frame.

    Args:
        encoded: scalar `tf.string`, the bytes of a JPEG, PNG, GIF or BMP file.
        channels: 1 or 3, the channels of the result.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    with tf.control_dependencies([check_format(encoded)]):
        # channels=3 makes every format RGB (grayscale repeated, alpha dropped) inside the
        # decoder, with no branching here; every format accepts it (GIF and BMP refuse 1).
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)
    if channels == 3:
        return image
    gray = tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))  # exact for grayscale files
    return tf.cast(tf.clip_by_value(tf.round(gray), 0.0, 255.0), tf.uint8)


def resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Resize `uint8 [h, w, c]` to `uint8 [height, width, c]` (stretching, no crop).

    Shrinking on both sides averages the pixels each output pixel covers ("area"), so a large
    photo is not reduced to a few sampled pixels; otherwise bilinear. An image already at
    `size` comes back unchanged. (Bilinear with antialiasing does both in one method, but costs
    several times as much per small image, which made the input pipeline the bottleneck.)

    Args:
        image: a `uint8 [h, w, c]` tensor.
        size: (height, width) of the result.
    """
    height, width = int(size[0]), int(size[1])
    # Area at the same size averages one pixel each: the image comes back exactly.
    shrink = tf.reduce_all(tf.shape(image)[:2] >= [height, width])
    out = tf.cond(
        shrink,
        lambda: tf.image.resize(image, (height, width), method="area"),
        lambda: tf.image.resize(image, (height, width), method="bilinear"),
    )
    out = tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(out, (height, width, image.shape[-1]))


def prepare(encoded: tf.Tensor, size: tuple[int, int], channels: int) -> tf.Tensor:
    """Encoded image bytes → `uint8 [height, width, channels]`: `decode`, then `resize`."""
    return resize(decode(encoded, channels), size)
