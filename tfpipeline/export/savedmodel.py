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
set (`compare`), and only then, if the promotion gate (tfpipeline/export/gate.py) lets it, renamed to the next
free integer (`publish`); a held-back candidate goes to `<base>/candidates/<run-id>/` (`hold`).
A crash at any point leaves at most a hidden `.tmp-*` folder, which TF Serving ignores (it
only looks at integer names) and the next export removes; never a half-written version.

The test figures a run records are the exported function's: the reloaded `serving_default`
scores the test split, and that evaluation is what metadata.json, the gate and the report use
(`Candidate.evaluation`). The in-memory model is only the check. The two need not agree to the
last bit: training compiles with `jit_compile="auto"`, which is XLA on a GPU, while the
signature is a plain `tf.function`, and a fused kernel may round differently. So the check
allows each probability to differ by `PROBABILITY_TOLERANCE`, and a predicted class to differ
only where the in-memory model's two highest probabilities are within twice that (a true
near-tie, where either answer is the model's); it records how many such near-ties flipped.
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
from typing import Any, Iterator

import keras
import numpy as np
import tensorflow as tf

from tfpipeline import inputs
from tfpipeline import signatures as names
from tfpipeline.errors import ExportVerificationError, UserError
from tfpipeline.export.warmup import write_warmup_requests
from tfpipeline.inputs import InputSpec

WARMUP_EXAMPLES = 3  # test examples behind the warm-up requests: enough to trace every signature
# How far a served probability may be from the in-memory model's: well above float32 rounding
# of a softmax (XLA's fused kernels, TF32 matmuls on a GPU), well below any real difference.
PROBABILITY_TOLERANCE = 1e-3
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
    set_method_names(path, spec.method_names())


def set_method_names(path: str | Path, methods: dict[str, str]) -> None:
    """Rewrite the method names of signatures in the SavedModel at `path` (e.g. a table's
    `classify` to TF Serving's classify method): `tf.saved_model.save` writes all as predict
    signatures, and TF Serving's Classify API refuses those."""
    if not methods:
        return
    from tensorflow.core.protobuf import saved_model_pb2

    pb = Path(path) / "saved_model.pb"
    model = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    for meta_graph in model.meta_graphs:
        for key, method in methods.items():
            if key in meta_graph.signature_def:
                meta_graph.signature_def[key].method_name = method
    pb.write_bytes(model.SerializeToString())


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
    # The served function's test evaluation (`report.evaluation.Evaluation`): the figures to record.
    evaluation: Any = None
    verification: dict = dataclasses.field(default_factory=dict)  # what `compare` found, for metadata.json

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def compare(reference: np.ndarray, served: np.ndarray, tolerance: float = PROBABILITY_TOLERANCE) -> dict:
    """Check the served probabilities against the in-memory model's, example by example.

    Args:
        reference: the in-memory model's probabilities, (examples, classes).
        served: the reloaded signature's, the same shape.
        tolerance: the largest difference allowed in any probability.

    Returns:
        What was found, for metadata.json: the largest difference, how many predicted classes
        differ, and how many of those are near-ties (all of them, or this raises: a class can
        only flip between probabilities that were within twice the largest difference).

    Raises:
        ExportVerificationError: a probability differs by more than `tolerance`, or a class
            differs where the in-memory model's top two probabilities were not a near-tie.
    """
    difference = float(np.abs(reference - served).max()) if reference.size else 0.0
    top2 = np.sort(reference, axis=-1)[:, -2:]
    near_tie = (top2[:, 1] - top2[:, 0]) <= 2 * tolerance
    differs = reference.argmax(-1) != served.argmax(-1)
    found = {"probability_tolerance": tolerance, "max_probability_difference": difference,
             "classes_differing": int(differs.sum()), "near_ties_differing": int((differs & near_tie).sum()),
             "examples": int(len(reference))}
    if difference > tolerance or (differs & ~near_tie).any():
        raise ExportVerificationError(
            f"the reloaded SavedModel's probabilities differ from the trained model's by up to {difference:.2g} "
            f"(allowed: {tolerance:g}), and its class differs on {int(differs.sum())} of {len(reference)} test "
            f"examples, {int((differs & ~near_tie).sum())} of them not near-ties")
    return found


@contextlib.contextmanager
def staged(model: keras.Model, spec: InputSpec, export_base: Path, test_examples,
           test_labels: np.ndarray, expected_accuracy: float | None = None, *,
           class_names=None, times=None) -> Iterator[Candidate]:
    """Write the SavedModel into a hidden folder, reload it with TF alone, score the test split
    through its `serving_default` and check that against the in-memory model (`compare`); yield
    it, with that evaluation, for `publish` or `hold`. Any failure, inside or after, removes the
    folder: nothing half-written is ever left to publish.

    Args:
        model: the trained Keras model.
        spec: the dataset's input spec: the signatures, their check and the warm-up requests.
        export_base: the folder of integer-named versions.
        test_examples, test_labels: the test split, as `report.evaluation.collect` holds it.
        expected_accuracy: the test accuracy the caller measured on the in-memory model, if any:
            the served accuracy must match it up to the near-ties `compare` allows.
        class_names: for the served evaluation's per-class figures (None: the class numbers).
        times: a `report.timing.StageTimes` to record the writing, the verification and the
            warm-up file in (None: not timed).

    Raises:
        ExportVerificationError: the reloaded SavedModel does not reproduce the model.
        UserError: `export_base` is not writable.
    """
    base = ensure_writable(Path(export_base))
    _remove_stale_temporaries(base)
    tmp = base / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    candidate = Candidate(tmp, base, float("nan"))
    stage = times.stage if times is not None else (lambda name: contextlib.nullcontext())
    try:
        with stage("export: write SavedModel"):
            write_savedmodel(model, spec, tmp)
        with stage("export: reload and verify"):
            candidate.verification, candidate.evaluation = _verify(model, spec, tmp, test_examples, test_labels,
                                                                   class_names)
        accuracy = candidate.evaluation.accuracy
        allowed = candidate.verification["near_ties_differing"] / max(1, len(test_labels))
        if expected_accuracy is not None and abs(accuracy - expected_accuracy) > allowed + 1e-12:
            raise ExportVerificationError(
                f"the reloaded SavedModel scores {accuracy:.4%} on the test set but the trained "
                f"model scored {expected_accuracy:.4%}"
            )
        with stage("export: warm-up requests"):  # TF Serving's assets.extra warm-up file
            write_warmup_requests(tmp, spec.warmup_requests(inputs.take(test_examples, slice(0, WARMUP_EXAMPLES))))
        candidate.verified_accuracy = accuracy
        candidate.signatures = spec.signature_metadata(test_examples)
        yield candidate
    finally:
        candidate.discard()  # a no-op once published or held (the folder was moved)


def _verify(model: keras.Model, spec: InputSpec, path: Path, test_examples, test_labels: np.ndarray,
            class_names) -> tuple[dict, Any]:
    """Reload the SavedModel at `path` with TF alone, score the test split through its
    `serving_default`, check that against the in-memory model (`compare`) and the spec's own
    checks (`spec.verify`); returns what `compare` found and the served evaluation."""
    from tfpipeline.report import evaluation

    loaded = tf.saved_model.load(str(path))  # plain TF, as a server loads it
    outputs = savedmodel_predict(path, spec, test_examples, loaded=loaded)
    reference = keras.ops.convert_to_numpy(keras.ops.softmax(
        model.predict(test_examples, batch_size=1000, verbose=0).astype(np.float32), axis=-1))
    verification = compare(reference, outputs["probabilities"])
    names_ = class_names if class_names is not None else [str(i) for i in range(reference.shape[-1])]
    served = evaluation.from_probabilities(test_labels, outputs["probabilities"], names_)
    spec.verify(loaded, test_examples)
    return verification, served


def _write_metadata(candidate: Candidate, metadata: dict) -> None:
    metadata = {**metadata, "export": {**metadata.get("export", {}), "signature": names.DEFAULT,
                                       "verified_test_accuracy": candidate.verified_accuracy,
                                       "verification": candidate.verification,
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


def export_verified(model: keras.Model, spec: InputSpec, export_base: Path, test_examples,
                    test_labels: np.ndarray, expected_accuracy: float, *, metadata: dict) -> ExportResult:
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
