"""Verified, versioned, atomic SavedModel export in TF Serving's layout.

    exported/<dataset>/<N>/            the SavedModel (saved_model.pb, variables/)
    exported/<dataset>/<N>/assets.extra/tf_serving_warmup_requests   (tfpipeline.export.warmup)
    exported/<dataset>/<N>/metadata.json

The signatures, what runs inside them and how they are checked come from the dataset's input
spec (`tfpipeline.inputs`: `spec.signatures`, `spec.request`, `spec.verify`); this module
knows only that `serving_default` returns `classes` and `probabilities`. For images:
tfpipeline/inputs/image.py.

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

from tfpipeline import inputs
from tfpipeline import signatures as names
from tfpipeline.errors import ExportVerificationError, UserError
from tfpipeline.export.warmup import write_warmup_requests
from tfpipeline.inputs import InputSpec

WARMUP_EXAMPLES = 3  # test examples behind the warm-up requests: enough to trace every signature
TMP_PREFIX = ".tmp-"
HELD_DIR = "candidates"  # versions the promotion gate held back, by run id


@dataclasses.dataclass
class ExportResult:
    path: Path
    version: int
    metadata_path: Path
    verified_accuracy: float


def versions(base: Path) -> list[int]:
    """Published versions under `base`, ascending (`signatures.version_dirs`: the one rule the
    gate, the server and the clients share)."""
    return sorted(names.version_dirs(base))


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


def write_savedmodel(model: keras.Model, spec: InputSpec, path: Path) -> None:
    """Write `model` as a SavedModel with the input spec's serving signatures, using Keras's own exporter."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, function in spec.signatures(model).items():
        archive.add_endpoint(name, function)
    archive.write_out(str(path), verbose=False)


def savedmodel_predict(path: Path, spec: InputSpec, examples, batch_size: int = 1000,
                       loaded=None) -> dict[str, np.ndarray]:
    """Run the SavedModel at `path` on `examples` through `serving_default`, with TF alone.

    Args:
        path: a SavedModel version folder.
        spec: the input spec that turns examples into the signature's inputs.
        examples: the examples, as the test split holds them.
        batch_size: examples per call.
        loaded: the SavedModel at `path`, if already loaded.

    Returns:
        Each output of the signature, concatenated over the examples.
    """
    loaded = loaded or tf.saved_model.load(str(path))
    serve = loaded.signatures[names.DEFAULT]
    outputs: dict[str, list[np.ndarray]] = {}
    for start in range(0, inputs.count(examples), batch_size):
        batch = inputs.take(examples, slice(start, start + batch_size))
        result = serve(**{name: tf.constant(value) for name, value in spec.request(batch).items()})
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
def staged(model: keras.Model, spec: InputSpec, export_base: Path, test_examples,
           test_labels: np.ndarray, expected_accuracy: float) -> Iterator[Candidate]:
    """Write the SavedModel into a hidden folder, reload it with TF alone and check it scores
    `expected_accuracy` on the test set; yield it for `publish` or `hold`. Any failure, inside
    or after, removes the folder: nothing half-written is ever left to publish.

    Args:
        model: the trained Keras model.
        spec: the dataset's input spec: the signatures, their check and the warm-up requests.
        export_base: the folder of integer-named versions.
        test_examples, test_labels: the test split, as `report.evaluation.collect` holds it.
        expected_accuracy: the in-memory model's test accuracy, which the reload must match.

    Raises:
        ExportVerificationError: the reloaded SavedModel does not reproduce the model.
        UserError: `export_base` is not writable.
    """
    base = ensure_writable(Path(export_base))
    _remove_stale_temporaries(base)
    tmp = base / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    candidate = Candidate(tmp, base, float("nan"))
    try:
        write_savedmodel(model, spec, tmp)
        loaded = tf.saved_model.load(str(tmp))  # plain TF, as a server loads it
        outputs = savedmodel_predict(tmp, spec, test_examples, loaded=loaded)
        accuracy = float((outputs[names.CLASSES] == test_labels).mean())
        if accuracy != expected_accuracy:
            raise ExportVerificationError(
                f"the reloaded SavedModel scores {accuracy:.4%} on the test set but the trained "
                f"model scored {expected_accuracy:.4%}"
            )
        spec.verify(loaded, test_examples)
        del loaded
        # TF Serving's assets.extra warm-up file
        write_warmup_requests(tmp, spec.warmup_requests(inputs.take(test_examples, slice(0, WARMUP_EXAMPLES))))
        candidate.verified_accuracy = accuracy
        candidate.signatures = spec.signature_metadata(test_examples)
        yield candidate
    finally:
        candidate.discard()  # a no-op once published or held (the folder was moved)


def _write_metadata(candidate: Candidate, metadata: dict) -> None:
    metadata = {**metadata, "export": {**metadata.get("export", {}), "signature": names.DEFAULT,
                                       "verified_test_accuracy": candidate.verified_accuracy,
                                       "signatures": candidate.signatures}}
    with open(candidate.path / "metadata.json", "w") as f:
        json.dump(metadata, f, indent=2, default=_json_default)
        f.flush()
        os.fsync(f.fileno())


def publish(candidate: Candidate, metadata: dict) -> ExportResult:
    """Write metadata.json into the candidate and rename it to the next free version."""
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


def export_verified(model: keras.Model, spec: InputSpec, export_base: Path, test_examples,
                    test_labels: np.ndarray, expected_accuracy: float, metadata: dict) -> ExportResult:
    """Stage, verify and publish in one go, with no promotion gate (the pipeline gates).

    Returns:
        Where the version went and its verified accuracy.

    Raises:
        ExportVerificationError, UserError: as `staged`.
    """
    with staged(model, spec, export_base, test_examples, test_labels, expected_accuracy) as candidate:
        return publish(candidate, metadata)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (Path, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
