"""The promotion gate: a new version is published unless it is shown to be worse than the best
published version of the same data.

Production pipelines bless a model before it is pushed (TFX's Evaluator compares the candidate
with a blessed model on the same data). Here:

- **Which baseline.** Every published version records which dataset it was trained on and which
  test examples that dataset's test split held (metadata.json's `dataset.identity`, see
  `tfpipeline.data.datasets.split_identity`). Versions of another dataset under the same export
  base are refused: the base would serve two unrelated models under one name. Among the
  versions whose test split is this run's (the same digest), the one with the best recorded
  test accuracy is the baseline; when none is (files were added to a folder, another
  `--seed` or `--validation-fraction` split it differently, another TFDS version), the latest.
- **On which examples.** The baseline is scored now, with its own SavedModel, on this run's
  test examples, leaving out the ones it trained on: a folder version lists the files it
  trained or selected on (`TRAINED_ON`, beside its metadata.json). Where that is not known
  (a folder version that did not record it, on a test split other than its own), the new
  version is published and the metadata says it was not compared. No model is ever scored on
  its own training examples: the candidate's test split is disjoint from its training split.
- **The decision.** Both models are judged on the same examples, so the comparison is paired:
  only the examples where exactly one of them is right carry information. The new version is
  held back when McNemar's exact one-sided test (the binomial tail of those discordant pairs,
  `mcnemar_p`) shows, at `--gate-confidence` (default 95%), that it is worse than the baseline
  by more than `--max-regression` points. The margin is what lets an equally good model pass:
  two seeds of one recipe are two different models, and on a large test split even their small
  difference is significant; a model clearly worse than the margin is held back with the
  p-value in the message. `--max-regression 0` holds back anything significantly worse. The
  p-value that it is worse at all is recorded beside it. Retrying with another seed until a
  worse model passes is what the confidence level guards against; the baseline is the best
  version, not the latest, so a chain of slightly worse versions cannot walk the accuracy down.

The first version of a base always passes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfpipeline import export, inputs
from tfpipeline import signatures as names
from tfpipeline.data.datasets import split_identity
from tfpipeline.errors import UserError
from tfpipeline.inputs import InputSpec
from tfpipeline.report import evaluation

#: The file beside a folder version's metadata.json that lists the files it trained or chose its
#: epochs on (`tfpipeline.data.datasets.file_key` of each): the test images it must not be scored on.
TRAINED_ON = "trained_on.json"
DEFAULT_CONFIDENCE = 95.0


@dataclasses.dataclass(frozen=True)
class Split:
    """What the gate knows of this run's data.

    Args:
        identity: the dataset's `identity` (which data, which test examples).
        test_keys: a folder's file key of each test example, in order (None for TFDS).
        trained_keys: the file keys of what the candidate trained on (train and validation).
    """

    identity: dict
    test_keys: list[str] | None = None
    trained_keys: list[str] | None = None


@dataclasses.dataclass
class Decision:
    publish: bool
    reason: str  # "first version", "not worse", "not compared", "forced", "regression"
    candidate_accuracy: float  # on the compared examples (all of the test split unless some are left out)
    max_regression: float  # points
    confidence: float = DEFAULT_CONFIDENCE  # percent
    baseline_version: int | None = None
    baseline_accuracy: float | None = None
    per_class_delta: dict[str, float] | None = None  # candidate - baseline, per class, in points
    compared: int | None = None  # test examples both were scored on
    left_out: int = 0  # test examples the baseline trained on
    candidate_only: int = 0  # of the compared, right by the candidate alone
    baseline_only: int = 0  # right by the baseline alone
    p_value: float | None = None  # one-sided exact McNemar: worse by more than max_regression (the decision)
    p_worse: float | None = None  # the same with no margin: worse at all
    note: str | None = None  # what differs between the two splits, said in the message and metadata

    @property
    def delta(self) -> float | None:
        """Candidate minus baseline accuracy on the compared examples, in percentage points."""
        if self.baseline_accuracy is None:
            return None
        return round((self.candidate_accuracy - self.baseline_accuracy) * 100, 4)

    def to_json(self) -> dict:
        baseline = None
        if self.baseline_version is not None:
            baseline = {"version": self.baseline_version, "test_accuracy": self.baseline_accuracy,
                        "delta_points": self.delta, "per_class_delta_points": self.per_class_delta,
                        "compared_examples": self.compared, "left_out_examples": self.left_out,
                        "disagreements": {"new_version_right": self.candidate_only,
                                          "baseline_right": self.baseline_only},
                        "p_value": self.p_value, "p_value_worse_at_all": self.p_worse, "note": self.note}
        return {"decision": "published" if self.publish else "held back", "reason": self.reason,
                "max_regression_points": self.max_regression, "confidence_percent": self.confidence,
                "test": "one-sided exact McNemar on the examples where exactly one model is right: held back "
                        "when worse by more than max_regression_points at confidence_percent",
                "test_accuracy": self.candidate_accuracy, "baseline": baseline}

    def comparison(self) -> str:
        """The figures behind the decision, in one sentence (no verdict)."""
        on = f"the same {self.compared:,} test examples"
        if self.left_out:
            on += f" ({self.left_out:,} it trained on left out)"
        return (f"test accuracy {self.candidate_accuracy:.2%} against {self.baseline_accuracy:.2%} for published "
                f"version {self.baseline_version} on {on}, {self.delta:+.2f} points; of the "
                f"{self.candidate_only + self.baseline_only:,} examples where exactly one is right, the new version "
                f"is right on {self.candidate_only:,} and version {self.baseline_version} on {self.baseline_only:,} "
                f"(McNemar exact one-sided p = {self.p_value:.3g} that it is more than {self.max_regression:g} "
                f"points worse, held back below {1 - self.confidence / 100:.3g}; p = {self.p_worse:.3g} that it is "
                "worse at all)")

    def message(self) -> str:
        if self.baseline_version is None:
            return "First version of this export base: published."
        if self.reason == "not compared" or self.baseline_accuracy is None:
            why = "--force-publish" if self.reason == "forced" else "no comparison"
            return f"Promotion gate: {why} with published version {self.baseline_version}: {self.note} Published."
        note = f" {self.note}" if self.note else ""
        return {"not worse": f"Promotion gate passed: {self.comparison()}.{note}",
                "forced": f"Promotion gate overridden by --force-publish: {self.comparison()}.{note}",
                "regression": f"Promotion gate held the new version back: {self.comparison()}.{note}"}[self.reason]

    def refusal(self) -> str:
        """Why the gate held the candidate back, in one or two sentences (for the exit message)."""
        return (f"The new version's {self.comparison()}: it is worse by more than --max-regression "
                f"{self.max_regression:g} points at {self.confidence:g}% confidence (--gate-confidence).")

    def per_class_lines(self) -> list[str]:
        """One line per class: its accuracy change, largest drops first."""
        if not self.per_class_delta:
            return []
        ordered = sorted(self.per_class_delta.items(), key=lambda item: item[1])
        return [f"  class {name:<12} {delta:+.2f} points" for name, delta in ordered]


def mcnemar_p(candidate_only: int, baseline_only: int, margin: float = 0.0) -> float:
    """McNemar's exact one-sided p-value that the candidate is worse than the baseline by more
    than `margin` examples' worth of accuracy.

    Of the `n` examples where exactly one model is right, `baseline_only` went the baseline's
    way. If the candidate were exactly `margin` examples worse, each would go the baseline's
    way with probability q = 1/2 + margin / (2n) (conditional on the observed number of
    disagreements); the p-value is the binomial tail P(X >= baseline_only) at that q. With no
    margin it is the textbook exact McNemar test, computed in exact integers.
    """
    n = candidate_only + baseline_only
    if n == 0:
        return 1.0
    if margin <= 0:
        tail = sum(math.comb(n, k) for k in range(baseline_only, n + 1))
        return min(1.0, tail / 2**n)  # exact integers: no underflow for thousands of pairs
    q = 0.5 + margin / (2 * n)
    if q >= 1:  # more than every disagreement going the baseline's way: never shown
        return 1.0
    from scipy import stats  # keras-tuner[bayesian]'s dependency; only for a margin

    return float(min(1.0, stats.binom.sf(baseline_only - 1, n, q)))


def write_trained_on(path: Path, keys: list[str]) -> None:
    """Record beside a version which files it trained or chose its epochs on (`TRAINED_ON`)."""
    (Path(path) / TRAINED_ON).write_text(json.dumps(sorted(set(keys))))


@dataclasses.dataclass(frozen=True)
class _Published:
    version: int
    path: Path
    metadata: dict | None

    @property
    def identity(self) -> dict | None:
        return split_identity(self.metadata["dataset"]) if self.metadata and "dataset" in self.metadata else None

    @property
    def accuracy(self) -> float:
        return float(((self.metadata or {}).get("metrics", {}).get("test") or {}).get("accuracy") or 0.0)

    def trained_keys(self) -> set[str] | None:
        try:
            return set(json.loads((self.path / TRAINED_ON).read_text()))
        except (OSError, ValueError):
            return None


def _published(base: Path) -> list[_Published]:
    found = []
    for version in export.versions(base):
        path = base / str(version)
        try:
            metadata = json.loads((path / "metadata.json").read_text())
        except (OSError, ValueError):  # not exported by the pipeline, or being copied in
            metadata = None
        found.append(_Published(version, path, metadata))
    return found


def _refuse_other_data(base: Path, published: list[_Published], identity: dict) -> None:
    """UserError when a version under `base` was trained on another dataset than this run's."""
    for version in published:
        theirs = version.identity
        if theirs is not None and identity and theirs["dataset"] != identity["dataset"]:
            raise UserError(
                f"The export base {base} holds version {version.version}, trained on {theirs['dataset']}, but this "
                f"run's data is {identity['dataset']}: one export base serves one model name, so versions of "
                "different datasets must not mix in it. Pass another --export-dir (or rename the folder), or move "
                f"the old versions out of {base}.")


def _baseline(published: list[_Published], identity: dict) -> tuple[_Published, bool]:
    """The best version on the same test split (and whether there was one), else the latest."""
    same = [v for v in published if identity and v.identity and v.identity.get("test_digest") is not None
            and v.identity["test_digest"] == identity.get("test_digest")]
    if same:
        return max(same, key=lambda v: (v.accuracy, v.version)), True
    return published[-1], False


def _comparable(baseline: _Published, split: Split, same_split: bool, count: int) -> tuple[np.ndarray | None, str]:
    """Which test examples the baseline may be scored on (None: none can be trusted), and what
    the message should say about the split."""
    every = np.ones(count, bool)
    if same_split:
        return every, ""
    if split.test_keys is None:  # TFDS: its test split is never a training split
        return every, (f"Version {baseline.version} was trained on another version or split of the dataset; its "
                       "test split is disjoint from its training data.")
    trained = baseline.trained_keys()
    if trained is None:
        return None, (f"version {baseline.version} was made from another split of this folder and did not record "
                      "the files it trained on, so it could be scored on its own training images.")
    keep = np.array([key not in trained for key in split.test_keys], bool)
    if not keep.any():
        return None, f"version {baseline.version} trained on every image of this run's test split."
    return keep, (f"Version {baseline.version} was made from another split of this folder: the test images it "
                  "trained on are left out of the comparison.")


def decide(base: Path, test_examples, test_labels: np.ndarray, class_names, candidate: evaluation.Evaluation, *,
           spec: InputSpec, split: Split, max_regression: float, confidence: float = DEFAULT_CONFIDENCE,
           force: bool = False) -> Decision:
    """Compare `candidate` with the best published version of the same data (see the module).

    Args:
        base: the export base (integer-named version folders).
        test_examples, test_labels: the test split the candidate was scored on.
        class_names: names for the per-class report.
        candidate: the candidate's evaluation on that split (its `predictions` are compared).
        spec: the input spec that turns the test examples into the baseline's request.
        split: this run's dataset identity and, for a folder, its file keys.
        max_regression: percentage points of accuracy the candidate may lose (the test's margin).
        confidence: percent; held back when the candidate is shown worse than the margin at this level.
        force: publish whatever the comparison says (still recorded).

    Returns:
        The `Decision`; the caller raises `errors.HeldBack` when it says not to publish.

    Raises:
        UserError: a version of another dataset is under `base`, or the baseline cannot score
            these test examples (without `force`).
    """
    published = _published(base)
    settings = {"max_regression": max_regression, "confidence": confidence}
    if not published:
        return Decision(True, "first version", candidate.accuracy, **settings)
    _refuse_other_data(base, published, split.identity)
    baseline, same_split = _baseline(published, split.identity)
    keep, note = _comparable(baseline, split, same_split, len(test_labels))
    if keep is None:
        return Decision(True, "not compared", candidate.accuracy, **settings, baseline_version=baseline.version,
                        note=note[0].upper() + note[1:])
    index = np.flatnonzero(keep)
    try:
        predicted = export.savedmodel_predict(baseline.path, spec, inputs.take(test_examples, index))[names.CLASSES]
    except (ValueError, TypeError, tf.errors.OpError) as exc:  # another input shape or dtype
        if force:
            return Decision(True, "forced", candidate.accuracy, **settings, baseline_version=baseline.version,
                            note="it cannot score this run's test examples.")
        raise UserError(
            f"The published version {baseline.version} under {base} cannot score this run's test examples "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}), so the gate cannot compare "
            "them: it was made for other inputs. Publish under another --export-dir, or pass --force-publish "
            "to publish without the comparison.") from None
    decision = _paired(test_labels[index], np.asarray(candidate.predictions)[index], predicted, class_names,
                       Decision(True, "not worse", candidate.accuracy, **settings, baseline_version=baseline.version,
                                left_out=int((~keep).sum()), note=note or None))
    decision.p_worse = mcnemar_p(decision.candidate_only, decision.baseline_only)
    decision.p_value = mcnemar_p(decision.candidate_only, decision.baseline_only,
                                 margin=max_regression / 100 * len(index))
    if decision.p_value < 1 - confidence / 100:
        decision.publish, decision.reason = force, "forced" if force else "regression"
    return decision


def _paired(labels: np.ndarray, ours: np.ndarray, theirs: np.ndarray, class_names, decision: Decision) -> Decision:
    """`decision` with both models' accuracies on the same examples, their disagreements and the
    per-class changes filled in."""
    ours_right, theirs_right = ours == labels, theirs == labels
    mine = evaluation.from_classes(labels, ours, class_names)
    other = evaluation.from_classes(labels, theirs, class_names)
    per_class = {name: round((mine.per_class_accuracy[name] - other.per_class_accuracy[name]) * 100, 2)
                 for name in mine.per_class_accuracy}
    return dataclasses.replace(decision, candidate_accuracy=mine.accuracy, baseline_accuracy=other.accuracy,
                               per_class_delta=per_class, compared=len(labels),
                               candidate_only=int((ours_right & ~theirs_right).sum()),
                               baseline_only=int((theirs_right & ~ours_right).sum()))
