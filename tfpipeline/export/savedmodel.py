"""Verified, versioned, atomic SavedModel export in TF Serving's layout.

    exported/<dataset>/<N>/            the SavedModel (saved_model.pb, variables/)
    exported/<dataset>/<N>/assets.extra/tf_serving_warmup_requests   (tfpipeline.export.warmup)
    exported/<dataset>/<N>/metadata.json

Two signatures: `serving_default` takes `images`, uint8 `[-1, H, W, C]` pixels; `serving_bytes`
takes `image_bytes`, a `tf.string [-1]` batch of encoded JPEG/PNG/GIF/BMP files of any size,
decoded, converted and resized in the graph by `imaging.prepare` (what the folder datasets'
`tf.data` map runs). Both return the same outputs.

A version is written into a hidden temporary folder beside its final place (`staged`),
reloaded with plain `tf.saved_model.load` and checked against the in-memory model on the test
set, and only then, if the promotion gate (tfpipeline/gate.py) lets it, renamed to the next
free integer (`publish`); a held-back candidate goes to `<base>/candidates/<run-id>/` (`hold`).
A crash at any point leaves at most a hidden `.tmp-*` folder, which TF Serving ignores (it
only looks at integer names) and the next export removes; never a half-written version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf

from tfpipeline.data import imaging
from tfpipeline.errors import ExportVerificationError, UserError
from tfpipeline.export.warmup import write_warmup_requests

SIGNATURE = "serving_default"
INPUT_NAME = "images"
BYTES_SIGNATURE = "serving_bytes"
BYTES_INPUT_NAME = "image_bytes"
# Test images sent through serving_bytes as PNG files by export verification.
BYTES_CHECK_EXAMPLES = 16
TMP_PREFIX = ".tmp-"
HELD_DIR = "candidates"  # versions the promotion gate held back, by run id


@dataclasses.dataclass
class ExportResult:
    path: Path
    version: int
    metadata_path: Path
    verified_accuracy: float


def versions(base: Path) -> list[int]:
    """Published versions under `base`, ascending (integer-named folders only)."""
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def ensure_writable(base: Path) -> Path:
    """Create `base` if needed and prove we can write in it, before any training time is spent."""
    base = Path(base)
    try:
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=base, prefix=TMP_PREFIX):
            pass
    except OSError as exc:
        raise UserError(
            f"Cannot write to the export directory {base}: {exc.strerror or exc}. "
            "Choose a writable folder with --export-dir or fix its permissions."
        ) from exc
    return base


def serving_function(model: keras.Model, input_shape) -> tf.types.experimental.PolymorphicFunction:
    """The `serving_default` signature: raw uint8 images in, probabilities and classes out."""

    @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.uint8, name=INPUT_NAME)])
    def serve(images):
        logits = tf.cast(model(images, training=False), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        return {
            "probabilities": probabilities,
            "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
        }

    return serve


def bytes_serving_function(pixels: tf.types.experimental.PolymorphicFunction, input_shape
                           ) -> tf.types.experimental.PolymorphicFunction:
    """The `serving_bytes` signature: encoded image files in, the same outputs as `serving_default`.

    A string that is not a JPEG/PNG/GIF/BMP file (or is cut short) fails the call with
    InvalidArgumentError naming what was expected; a server answers that request with an
    error and goes on serving.

    Args:
        pixels: the `serving_default` function (`serving_function`); called on the decoded
            images, so the model is traced once for both signatures.
        input_shape: (height, width, channels) of the model's input.
    """
    height, width, channels = (int(d) for d in input_shape)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT_NAME)])
    def serve_bytes(image_bytes):
        images = tf.map_fn(
            lambda encoded: imaging.prepare(encoded, (height, width), channels),
            image_bytes,
            fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8),
        )
        return pixels(images)

    return serve_bytes


def write_savedmodel(model: keras.Model, input_shape, path: Path) -> None:
    """Write `model` as a SavedModel with our two serving signatures, using Keras's own exporter."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    pixels = serving_function(model, tuple(input_shape))
    archive.add_endpoint(SIGNATURE, pixels)
    archive.add_endpoint(BYTES_SIGNATURE, bytes_serving_function(pixels, tuple(input_shape)))
    archive.write_out(str(path), verbose=False)


def encode_png(images: np.ndarray) -> np.ndarray:
    """uint8 `[n, H, W, C]` → a `[n]` array of PNG files' bytes (lossless: same pixels back)."""
    return np.array([tf.io.encode_png(image).numpy() for image in images], dtype=object)


def check_bytes_signature(path: Path, images: np.ndarray, loaded=None) -> None:
    """`serving_bytes` on `images` sent as PNG files must give `serving_default`'s classes and
    probabilities; raises ExportVerificationError otherwise. `loaded`: the SavedModel at
    `path`, if already loaded."""
    loaded = loaded or tf.saved_model.load(str(path))
    if BYTES_SIGNATURE not in loaded.signatures:
        raise ExportVerificationError(f"the SavedModel has no {BYTES_SIGNATURE} signature")
    pixels = loaded.signatures[SIGNATURE](**{INPUT_NAME: tf.constant(images)})
    encoded = loaded.signatures[BYTES_SIGNATURE](**{BYTES_INPUT_NAME: tf.constant(encode_png(images))})
    if not np.array_equal(pixels["classes"].numpy(), encoded["classes"].numpy()) or not np.allclose(
        pixels["probabilities"].numpy(), encoded["probabilities"].numpy(), atol=1e-5
    ):
        raise ExportVerificationError(
            f"{BYTES_SIGNATURE} on {len(images)} test images sent as PNG files does not give the "
            f"outputs of {SIGNATURE} on their pixels"
        )


def savedmodel_predict(path: Path, images: np.ndarray, batch_size: int = 1000, loaded=None) -> dict[str, np.ndarray]:
    """Run the SavedModel at `path` on `images` through `serving_default`, with TF alone.
    `loaded`: the SavedModel at `path`, if already loaded."""
    loaded = loaded or tf.saved_model.load(str(path))
    serve = loaded.signatures[SIGNATURE]
    outputs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        result = serve(**{INPUT_NAME: tf.constant(images[start : start + batch_size])})
        for key, value in result.items():
            outputs.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(parts) for key, parts in outputs.items()}


def _remove_stale_temporaries(base: Path) -> None:
    """Delete `.tmp-<pid>-*` folders whose writing process is gone (a crashed export)."""
    for entry in base.glob(f"{TMP_PREFIX}*"):
        parts = entry.name[len(TMP_PREFIX) :].split("-")
        if not entry.is_dir() or not parts[0].isdigit():
            continue
        pid = int(parts[0])
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(entry, ignore_errors=True)


def _publish(tmp: Path, base: Path) -> int:
    """Rename `tmp` to the next free version; retry if another export took that number."""
    for _ in range(100):
        version = (versions(base) or [0])[-1] + 1
        try:
            os.rename(tmp, base / str(version))  # atomic on one filesystem
            return version
        except OSError:
            if not (base / str(version)).exists():
                raise
    raise RuntimeError(f"could not find a free version number in {base}")


def signature_metadata(input_shape, bytes_checked: int) -> dict:
    """metadata.json's description of the two signatures."""
    height, width, channels = (int(d) for d in input_shape)
    return {
        SIGNATURE: {"input": INPUT_NAME, "dtype": "uint8", "shape": [-1, height, width, channels]},
        BYTES_SIGNATURE: {"input": BYTES_INPUT_NAME, "dtype": "string", "shape": [-1], "channels": channels,
                          "resize": f"imaging.resize to {height}x{width} (area when shrinking, else bilinear)",
                          "verified_on": f"{bytes_checked} test images as PNG"},
    }


@dataclasses.dataclass
class Candidate:
    """A written and verified SavedModel in a hidden folder beside the versions, not yet published."""

    path: Path
    base: Path
    verified_accuracy: float
    signatures: dict = dataclasses.field(default_factory=dict)  # for metadata.json

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def staged(model: keras.Model, input_shape, export_base: Path, test_images: np.ndarray,
           test_labels: np.ndarray, expected_accuracy: float) -> Iterator[Candidate]:
    """Write the SavedModel into a hidden folder, reload it with TF alone and check it scores
    `expected_accuracy` on the test set; yield it for `publish` or `hold`. Any failure, inside
    or after, removes the folder: nothing half-written is ever left to publish.

    Returns:
        A context manager yielding the verified `Candidate` (its `verified_accuracy` set).

    Raises:
        ExportVerificationError: the reloaded SavedModel scores otherwise than the model, or a
            signature disagrees with `serving_default`.
        UserError: `export_base` is not writable.
    """
    base = ensure_writable(Path(export_base))
    _remove_stale_temporaries(base)
    tmp = base / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    candidate = Candidate(tmp, base, float("nan"))
    try:
        write_savedmodel(model, input_shape, tmp)
        loaded = tf.saved_model.load(str(tmp))  # plain TF, as a server loads it
        outputs = savedmodel_predict(tmp, test_images, loaded=loaded)
        accuracy = float((outputs["classes"] == test_labels).mean())
        if accuracy != expected_accuracy:
            raise ExportVerificationError(
                f"the reloaded SavedModel scores {accuracy:.4%} on the test set but the trained "
                f"model scored {expected_accuracy:.4%}"
            )
        check_bytes_signature(tmp, test_images[:BYTES_CHECK_EXAMPLES], loaded=loaded)
        del loaded
        write_warmup_requests(tmp, test_images[:3])  # TF Serving's assets.extra warm-up file
        candidate.verified_accuracy = accuracy
        candidate.signatures = signature_metadata(input_shape, min(len(test_images), BYTES_CHECK_EXAMPLES))
        yield candidate
    finally:
        candidate.discard()  # a no-op once published or held (the folder was moved)


def _write_metadata(candidate: Candidate, metadata: dict) -> None:
    metadata = {**metadata, "export": {**metadata.get("export", {}), "signature": SIGNATURE,
                                       "verified_test_accuracy": candidate.verified_accuracy,
                                       "signatures": candidate.signatures}}
    with open(candidate.path / "metadata.json", "w") as f:
        json.dump(metadata, f, indent=2, default=_json_default)
        f.flush()
        os.fsync(f.fileno())


def publish(candidate: Candidate, metadata: dict) -> ExportResult:
    """Write metadata.json into the candidate and rename it to the next free version.

    Returns:
        The `ExportResult`: the version's folder and number, its metadata.json, the verified
        test accuracy.
    """
    _write_metadata(candidate, metadata)
    version = _publish(candidate.path, candidate.base)
    path = candidate.base / str(version)
    return ExportResult(path, version, path / "metadata.json", candidate.verified_accuracy)


def hold(candidate: Candidate, metadata: dict, name: str) -> Path:
    """Keep a candidate that is not to be published at `<base>/candidates/<name>/` (TF Serving
    and our server only load integer-named folders), with its metadata.json."""
    _write_metadata(candidate, metadata)
    target = candidate.base / HELD_DIR / name
    target.parent.mkdir(exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)  # the same run held back again
    os.rename(candidate.path, target)
    return target


def export_verified(model: keras.Model, input_shape, export_base: Path, test_images: np.ndarray,
                    test_labels: np.ndarray, expected_accuracy: float, *, metadata: dict) -> ExportResult:
    """Stage, verify and publish in one go, with no promotion gate (the pipeline gates)."""
    with staged(model, input_shape, export_base, test_images, test_labels, expected_accuracy) as candidate:
        return publish(candidate, metadata)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (Path, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
