"""Exact resume for text and tables: `python -m pipelines.text` and `python -m pipelines.table`
on a generated corpus and table, with --deterministic, killed with SIGKILL after
their second epoch's backup and run again, end with the weights an uninterrupted run ends with.
The image runs' cases (mid-epoch, tuned runs) are in test_resume.py; what makes a run exact is the
same code for every kind (the per-epoch stream, the checkpointed early-stopping state)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serving_helpers import env
from test_resume import _backup_epoch, _digest
from test_table import mixed_rows, write
from test_text import documents, write_table

COMMON = ("--no-tune", "--deterministic", "--epochs", "5", "--histogram-freq", "0")


def _command(kind: str, dataset: Path, cwd: Path) -> list[str]:
    return [sys.executable, "-m", f"pipelines.{kind}", "--dataset", str(dataset), "--label-column",
            {"text": "topic", "table": "label"}[kind], *COMMON,
            "--export-dir", str(cwd / "exported"), "--logdir", str(cwd / "runs"), "--work-dir", str(cwd / "work")]


def _kill_after_epoch(command: list[str], cwd: Path, epoch: int) -> None:
    """Run `command` until its backup holds `epoch` finished epochs, then SIGKILL it."""
    proc = subprocess.Popen(command, cwd=cwd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if _backup_epoch(cwd) >= epoch:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    raise AssertionError(f"{' '.join(command[2:4])} ended (exit {proc.returncode}) before it could be killed")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["text", "table"])
def test_a_killed_run_resumes_to_an_uninterrupted_runs_weights(kind, tmp_path):
    if kind == "text":  # generated, small: the tweets' end-to-end run is test_text_pipeline's
        dataset = write_table(tmp_path / "docs.csv", documents(400))
    else:
        dataset = write(tmp_path / "rows.csv", *mixed_rows(6_000))
    outputs = {}
    for name in ("whole", "killed"):
        cwd = tmp_path / name
        cwd.mkdir()
        if name == "killed":
            _kill_after_epoch(_command(kind, dataset, cwd), cwd, epoch=2)
            assert not (cwd / "exported").exists() or not any((cwd / "exported").rglob("saved_model.pb"))
        done = subprocess.run(_command(kind, dataset, cwd), cwd=cwd, env=env(), capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        outputs[name] = done.stdout
    assert re.search(r"Resuming training from epoch [2-5]/5", outputs["killed"]), outputs["killed"][-3000:]
    assert _digest(outputs["killed"]) == _digest(outputs["whole"])
