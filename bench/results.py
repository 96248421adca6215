"""Where a benchmark keeps its result: one JSON file per run in bench/results/ (ignored by git).

A figure means something later only beside the command that produced it, the time and the
machine (this machine's speed moves 2-4x between days), so every benchmark writes its result
through `write`, which puts those three first. The file is named after the benchmark and the
local time, so runs never overwrite each other.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """The CPU, its cores and the versions that a figure depends on."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # Here, not at the top: a load generator imports this module and must not start TensorFlow.
    import keras
    import tensorflow as tf

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def write(name: str, result: dict, argv: list[str] | None = None, *, command: str | None = None,
          out: Path | None = None) -> Path:
    """Write `result` as JSON after "command", "date" and "machine"; return the file's path.

    Args:
        name: the benchmark's name; the file is bench/results/<name>-<YYYYmmdd-HHMMSS>.json.
        result: the figures. A "machine" entry of its own (a matmul rate, the load average) is
            merged over `machine()`'s.
        argv: the arguments the benchmark was given; None: `sys.argv[1:]`.
        command: how the benchmark is started; default `python -m bench.<name>`.
        out: write here instead (a benchmark's `--out`).

    Returns:
        The path written.
    """
    arguments = sys.argv[1:] if argv is None else argv
    stamped = {
        "command": " ".join([command or f"python -m bench.{name}", *arguments]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), **result.get("machine", {})},
        **{key: value for key, value in result.items() if key != "machine"},
    }
    path = out or DIR / f"{name}-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamped, indent=2))
    return path
