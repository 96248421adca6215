"""How a command ends: the outcome exceptions, their exit codes, and the one path that prints them.

Every way a run can end other than success is an `Outcome` subclass here, with its exit code
and the sentence that tells the user what to do next. The three commands (`cli`, `serve`,
`predict`) wrap their work in `exit_on_error`, which prints an outcome as one paragraph on
stderr (no traceback) and returns its code. Anything that is not an `Outcome` is a bug and
keeps its traceback.

This module imports nothing heavy: the commands import it before TensorFlow.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_EXPORT_FAILED = 4
EXIT_HELD_BACK = 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class Outcome(Exception):
    """A run that ended without publishing, for a reason the user should read.

    Subclasses set `exit_code` and may override `paragraph` (the one paragraph printed) and
    `details` (lines printed before it).
    """

    exit_code = 1

    def paragraph(self) -> str:
        return str(self)

    def details(self) -> list[str]:
        return []


class UserError(Outcome):
    """A mistake the user can fix: a bad flag, missing data files, an unwritable directory."""

    exit_code = EXIT_USER_ERROR


class TrainingDiverged(Outcome):
    """The loss became NaN or infinite (or exploded); the model must not be exported."""

    exit_code = EXIT_DIVERGED

    def paragraph(self) -> str:
        return (f"Training diverged: {self}. Nothing was exported. Try a lower --learning-rate "
                "(or --clipnorm, or a smaller --batch-size).")


class ExportVerificationError(Outcome):
    """The reloaded SavedModel does not reproduce the in-memory model; nothing was published."""

    exit_code = EXIT_EXPORT_FAILED

    def paragraph(self) -> str:
        return f"Export failed verification: {self}. Nothing was published."


class QuantizationError(Outcome):
    """The int8 model lost more accuracy than allowed; nothing was published."""

    exit_code = EXIT_EXPORT_FAILED

    def paragraph(self) -> str:
        return f"The int8 TFLite export failed its check: {self}. Nothing was published."


class HeldBack(Outcome):
    """The promotion gate held the new version back.

    Args:
        decision: the gate's `Decision` (tfpipeline/export/gate.py): its `message()` and
            `per_class_lines()` say why.
        candidate: where the verified export was kept.
        result: the run's `PipelineResult`, for callers that want the figures anyway.
    """

    exit_code = EXIT_HELD_BACK

    def __init__(self, decision: Any, candidate: Path, result: Any = None):
        super().__init__(decision.message())
        self.decision, self.candidate, self.result = decision, candidate, result

    def paragraph(self) -> str:
        return (f"Not published. {self.decision.refusal()} The verified candidate is kept at {self.candidate}. "
                "Run again with --force-publish to publish anyway.")

    def details(self) -> list[str]:
        return ["", "Test accuracy by class, new version against the published one:",
                *self.decision.per_class_lines()]


def fail(message: str, code: int = EXIT_USER_ERROR) -> int:
    """Print `error: message` as one wrapped paragraph on stderr and return `code`."""
    # Never break inside a word: paths (pytest-of-root, my-data/...) must stay copyable.
    print(textwrap.fill(f"error: {message}", width=100, break_on_hyphens=False, break_long_words=False),
          file=sys.stderr)
    return code


def exit_on_error(work: Callable[[], int | None], interrupted: str | None = None) -> int:
    """Run `work` and turn an `Outcome` (or Ctrl-C) into its printed paragraph and exit code.

    Args:
        work: the command's body; returns its exit code (None: 0).
        interrupted: what to tell the user on Ctrl-C (None: just "Interrupted.").

    Returns:
        The exit code: `work`'s own, an outcome's `exit_code`, or `EXIT_INTERRUPTED`.
    """
    try:
        return work() or EXIT_OK
    except Outcome as exc:
        for line in exc.details():
            print(line, file=sys.stderr)
        return fail(exc.paragraph(), exc.exit_code)
    except KeyboardInterrupt:
        return fail(interrupted or "Interrupted.", EXIT_INTERRUPTED)
