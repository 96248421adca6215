"""The promotion gate: a new version is published only if it is not worse than the last one.

Production pipelines bless a model before it is pushed (TFX's Evaluator compares the candidate
with the latest blessed model on the same data). Here the baseline is the latest version
published under the same export base, scored *now* on this run's test split with its own
SavedModel (so both are judged on the same images, whatever that version's metadata says),
and the candidate passes if its test accuracy is at most `max_regression` points below.
The first version of a base always passes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfpipeline import export
from tfpipeline import signatures as names
from tfpipeline.errors import HeldBack, UserError
from tfpipeline.inputs import InputSpec
from tfpipeline.report import evaluation


@dataclasses.dataclass
class Decision:
    publish: bool
    reason: str  # "first version", "not worse", "forced", "regression"
    candidate_accuracy: float
    max_regression: float  # points
    baseline_version: int | None = None
    baseline_accuracy: float | None = None
    per_class_delta: dict[str, float] | None = None  # candidate - baseline, per class, in points

    @property
    def delta(self) -> float | None:
        """Candidate minus baseline test accuracy, in percentage points."""
        if self.baseline_accuracy is None:
            return None
        return round((self.candidate_accuracy - self.baseline_accuracy) * 100, 4)

    def to_json(self) -> dict:
        baseline = None
        if self.baseline_version is not None:
            baseline = {"version": self.baseline_version, "test_accuracy": self.baseline_accuracy,
                        "delta_points": self.delta, "per_class_delta_points": self.per_class_delta}
        return {"decision": "published" if self.publish else "held back", "reason": self.reason,
                "max_regression_points": self.max_regression, "test_accuracy": self.candidate_accuracy,
                "baseline": baseline}

    def message(self) -> str:
        if self.baseline_version is None:
            return "First version of this export base: published."
        if self.baseline_accuracy is None:
            return (f"Promotion gate skipped by --force-publish: the latest version {self.baseline_version} "
                    "cannot score this run's test images.")
        text = (f"test accuracy {self.candidate_accuracy:.2%} against {self.baseline_accuracy:.2%} for the latest "
                f"published version {self.baseline_version} ({self.delta:+.2f} points; allowed: "
                f"-{self.max_regression:g})")
        return {"not worse": f"Promotion gate passed: {text}.",
                "forced": f"Promotion gate overridden by --force-publish: {text}.",
                "regression": f"Promotion gate held the new version back: {text}."}[self.reason]

    def refusal(self) -> str:
        """Why the gate held the candidate back, in one or two sentences (for the exit message)."""
        return (f"The new version's test accuracy is {self.candidate_accuracy:.2%}; the latest published version "
                f"{self.baseline_version} scores {self.baseline_accuracy:.2%} on the same test split "
                f"({self.delta:+.2f} points; --max-regression allows -{self.max_regression:g}).")

    def per_class_lines(self) -> list[str]:
        """One line per class: its accuracy change, largest drops first."""
        if not self.per_class_delta:
            return []
        ordered = sorted(self.per_class_delta.items(), key=lambda item: item[1])
        return [f"  class {name:<12} {delta:+.2f} points" for name, delta in ordered]


def decide(base: Path, test_examples, test_labels: np.ndarray, class_names,
           candidate: evaluation.Evaluation, *, spec: InputSpec, max_regression: float, force: bool) -> Decision:
    """Compare `candidate` with the latest version under `base` on the same test split.

    Args:
        base: the export base (integer-named version folders).
        test_examples, test_labels: the test split the candidate was scored on.
        class_names: names for the per-class report.
        candidate: the candidate's evaluation on that split.
        spec: the input spec that turns the test examples into the latest version's request.
        max_regression: percentage points of accuracy the candidate may lose.
        force: publish whatever the comparison says (still recorded).

    Returns:
        The decision, with the per-class comparison when there is a baseline.

    Raises:
        UserError: the latest version cannot score these test examples (without `force`).
    """
    published = export.versions(base)
    if not published:
        return Decision(True, "first version", candidate.accuracy, max_regression)
    latest = published[-1]
    try:
        predicted = export.savedmodel_predict(base / str(latest), spec, test_examples)[names.CLASSES]
    except (ValueError, TypeError, tf.errors.OpError) as exc:  # another input shape or dtype
        if force:
            return Decision(True, "forced", candidate.accuracy, max_regression, latest)
        raise UserError(
            f"The latest published version {latest} under {base} cannot score this run's test images "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}), so the gate cannot compare "
            "them: it was made for other data. Publish under another --export-dir, or pass --force-publish "
            "to publish without the comparison.") from None
    baseline = evaluation.from_classes(test_labels, predicted, class_names)
    per_class = {name: round((candidate.per_class_accuracy[name] - baseline.per_class_accuracy[name]) * 100, 2)
                 for name in candidate.per_class_accuracy}
    worse = candidate.accuracy < baseline.accuracy - max_regression / 100 - 1e-12
    reason = ("forced" if force else "regression") if worse else "not worse"
    return Decision(not worse or force, reason, candidate.accuracy, max_regression, latest, baseline.accuracy, per_class)
