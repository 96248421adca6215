"""Where a run's time went: each stage's wall time, for the printed summary, metadata.json's
`timing` and the TensorBoard run summary.

`pipeline.run` makes one `StageTimes` and wraps each stage in `with times.stage("name"):`.
Stages are flat (none inside another), so their seconds add up to at most the total; what
they leave out (work between stages) shows as "other". The total counts from the command's
start when the command passes it (`process_started`: the process's start, so Python's start-up
and the imports are in it as "start-up"), else from `pipeline.run`'s start.

A stage that did not run in this process says why instead of showing 0 s (`skip`): an ensemble
member an interrupted run had finished, the train rate on a worker or when switched off. A
stage that resumed an interrupted run's work shows this session's seconds with a note
(`note`): the interrupted sessions' seconds are not known.

Imports no TensorFlow: the command's summary formats the block.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

STARTUP = "start-up"
REFERENCE_RATE = 6000  # images/s: the day the issue-28 goals are stated for


def process_started() -> float | None:
    """When this process started (`time.time()` scale), from Linux's /proc; None elsewhere.

    The process's age is /proc/uptime minus its start in /proc/self/stat (both in the boot
    clock, to the hundredth of a second), so the answer is as good as the wall clock now.
    """
    try:
        with open("/proc/self/stat") as f:
            # Field 22, counted after the command name in parentheses (which may hold spaces).
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - age if 0 <= age < 30 * 86400 else None


class StageTimes:
    """The stages of one run, in the order they ran, with their seconds or why they did not run."""

    def __init__(self, started: float | None = None):
        """`started`: when the command began (`time.time()`), if before now; None: now."""
        now = time.time()
        self._clock = time.perf_counter()
        self.startup = max(0.0, now - started) if started is not None and started <= now else None
        self.seconds: dict[str, float] = {}
        self.notes: dict[str, str] = {}
        self.order: list[str] = []
        self.train_rate: dict | None = None

    def _add(self, name: str) -> None:
        if name not in self.order:
            self.order.append(name)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name` (a name used twice adds up)."""
        self._add(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def note(self, name: str, text: str) -> None:
        """Say something about a stage: it resumed an interrupted run (its seconds are this session's)."""
        self._add(name)
        self.notes[name] = text

    def skip(self, name: str, why: str) -> None:
        """A stage that did not run in this process, and why."""
        self.note(name, why)

    def total(self) -> float:
        """Seconds from the command's start (or the run's) until now."""
        return (self.startup or 0.0) + time.perf_counter() - self._clock

    def to_json(self) -> dict:
        """metadata.json's `timing`: stage seconds in order, the total, notes, the train rate."""
        stages = {**({STARTUP: self.startup} if self.startup is not None else {}),
                  **{name: self.seconds[name] for name in self.order if name in self.seconds}}
        total = self.total()
        return {"stages": {name: round(seconds, 3) for name, seconds in stages.items()},
                "total_s": round(total, 3),
                "other_s": round(max(0.0, total - sum(stages.values())), 3),
                "since": "the command's start" if self.startup is not None else "pipeline.run's start",
                "notes": {name: self.notes[name] for name in self.order if name in self.notes},
                "train_rate": self.train_rate}


def _rows(timing: dict) -> list[tuple[str, float | None, str]]:
    """(stage, seconds or None, note) in the order the stages ran, then "other"."""
    stages, notes = timing["stages"], timing.get("notes", {})
    names = list(stages) + [name for name in notes if name not in stages]
    rows = [(name, stages.get(name), notes.get(name, "")) for name in names]
    if STARTUP in stages:
        rows[0] = (STARTUP, stages[STARTUP], "Python, imports, flags")
    return rows + [("other", timing["other_s"], "between the stages")]


def summary(timing: dict | None) -> str:
    """The printed summary's "where the time went" block: stage, seconds, share of the total."""
    if not timing:
        return ""
    total = timing["total_s"]
    lines = [f"\n  where the time went ({total:.1f} s from {timing['since']} to metadata.json):"]
    for name, seconds, note in _rows(timing):
        if seconds is None:
            lines.append(f"    {name:<30}{'-':>9}{'':>5}  {note}")
        else:
            share = seconds / total if total > 0 else 0.0
            lines.append(f"    {name:<30}{seconds:>7.1f} s{share:>5.0%}" + (f"  {note}" if note else ""))
    return "\n".join(lines) + "\n" + train_rate_line(timing)


def train_rate_line(timing: dict) -> str:
    """The train rate's line: the day's reading, and the total scaled to the goals' reference day."""
    rate = timing.get("train_rate")
    if not rate:
        why = timing.get("notes", {}).get("train rate", "not measured")
        return f"  train rate      {why}: these wall times do not compare across days"
    scaled = timing["total_s"] * rate["images_per_s"] / REFERENCE_RATE
    return (f"  train rate      {rate['images_per_s']:,} images/s today ({rate['model']}; {rate['steps']} steps);\n"
            f"                  the total scales to about {scaled:.0f} s on a {REFERENCE_RATE:,} images/s day")


def markdown_rows(timing: dict | None) -> dict:
    """The TensorBoard run summary's "where the time went" table: stage → seconds and share."""
    if not timing:
        return {}
    total = timing["total_s"] or 1.0
    rows = {name: (f"{seconds:.1f} s ({seconds / total:.0%})" if seconds is not None else "not run")
            + (f"; {note}" if note else "") for name, seconds, note in _rows(timing)}
    rows[f"total (from {timing['since']})"] = f"{timing['total_s']:.1f} s"
    rate = timing.get("train_rate")
    rows["day's train rate"] = (f"{rate['images_per_s']:,} images/s ({rate['model']}; {rate['steps']})" if rate
                               else timing.get("notes", {}).get("train rate", "not measured"))
    return rows
