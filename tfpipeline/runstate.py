"""Where an unfinished run keeps its state, so the same command run again resumes it.

    <work-dir>/<dataset>/<key>/run.json        the unfinished run's id (removed when it ends)
    <work-dir>/<dataset>/<key>/<run-id>/...     its checkpoints: the search's KerasTuner
                                                project, the training's BackupAndRestore

`key` is a digest of what defines "the same command" (the family, hyperparameters, seed,
data, search budget...), so another command never picks up this one's checkpoints.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from tfpipeline.errors import UserError


def key(prefix: str, identity: dict) -> str:
    """`prefix-<digest of identity>`: the folder of one command's unfinished run."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return f"{prefix}-{digest[:10]}"


@dataclasses.dataclass
class RunState:
    run_id: str
    state_dir: Path  # <work-dir>/<dataset>/<key>
    created: bool  # this process started the run (False: it resumes one, or joins its chief's)

    @property
    def run_dir(self) -> Path:
        return self.state_dir / self.run_id

    def finish(self) -> None:
        """The run is over: the next run of this command starts anew (its files stay)."""
        (self.state_dir / "run.json").unlink(missing_ok=True)


def _read(pointer: Path) -> str | None:
    for _ in range(50):  # written in one go, but a reader on a network file system may see it early
        try:
            return json.loads(pointer.read_text())["run_id"]
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, KeyError):
            time.sleep(0.1)
    raise UserError(f"{pointer} is unreadable; delete it (or run with --overwrite) to start a new run.")


def resolve(state_dir: Path, new_id: str, *, overwrite: bool = False, follower: bool = False) -> RunState:
    """The unfinished run of this command, or a new one named `new_id`.

    Race-free for processes started together (a distributed search's chief and workers):
    the first to link run.json wins and the others join its run. `overwrite` drops the
    unfinished run first; a `follower` (a search worker) never drops its chief's.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    pointer = state_dir / "run.json"
    if overwrite and not follower:
        old = _read(pointer)
        if old is not None:
            print(f"--overwrite: dropping the unfinished run {old}.", flush=True)
            shutil.rmtree(state_dir / old, ignore_errors=True)
            pointer.unlink(missing_ok=True)
    existing = _read(pointer)
    if existing is not None:
        return RunState(existing, state_dir, created=False)
    tmp = state_dir / f".run-{os.getpid()}.json"
    tmp.write_text(json.dumps({"run_id": new_id}))
    try:
        os.link(tmp, pointer)  # atomic, and fails if another process got there first
        run_id, created = new_id, True
    except FileExistsError:
        run_id, created = _read(pointer), False
    finally:
        tmp.unlink(missing_ok=True)
    return RunState(run_id, state_dir, created)


def write_json(path: str | Path, state: dict) -> None:
    """Write-then-rename: a kill in the middle leaves the previous file (or none), never a cut one.

    KerasTuner truncates its state files and then writes them (oracle.json, trial.json,
    tuner0.json); a kill -9 in between would leave a search that cannot be reloaded
    (tfpipeline/tuning/oracles.py saves them with this instead).
    """
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def new_run_id(name: str | None, model: str, tuned: bool) -> str:
    """Readable: the time and the family (`20261201-210455-cnn`, `...-auto-tuned`)."""
    return name or f"{dt.datetime.now():%Y%m%d-%H%M%S}-{model}{'-tuned' if tuned else ''}"
