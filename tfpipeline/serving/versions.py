"""Find, load and swap model versions under a TF Serving style base path (`<base>/<N>/`).

Policy, as TF Serving's ServableVersionPolicy: "latest" (the default) serves the highest
`num_versions` complete versions, "all" every version, "specific" the listed ones. Version
labels (TF Serving's `version_labels`) name versions; a label may only point at a version
that is loaded. A new version is loaded in a worker thread and becomes visible only once it is
warmed up; the version it replaces is then dropped from the table. Requests that already
picked the old version keep a reference to it and finish normally, so a swap never fails a
request. This module imports no TensorFlow: the loader is passed in.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tfpipeline.signatures import version_dirs

from .errors import FailedPrecondition, NotFound, RequestError
from .model_config import VersionPolicy

log = logging.getLogger("tfpipeline.serving")

_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def _model_file(directory: Path) -> Path | None:
    for name in _MODEL_FILES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def discover_versions(base: Path) -> dict[int, Path]:
    """Version number -> directory: the one rule the export uses too (`signatures.version_dirs`).

    An integer-named folder without a SavedModel (empty, or half copied) is a version that fails
    to load and is reported as such, as TF Serving reports it; a hidden `.tmp-*` folder of an
    export in progress is not a version.
    """
    return version_dirs(base)


def _stamp(path: Path) -> float:
    """Modification time of the version's model file: a failed load is retried when it changes."""
    model_file = _model_file(path)
    try:
        return model_file.stat().st_mtime if model_file else 0.0
    except OSError:
        return 0.0


def _summary(exc: Exception) -> str:
    """First line of an exception: TensorFlow's load errors run to many lines of context."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@dataclass
class VersionState:
    """One row of TF Serving's `model_version_status`."""

    version: int
    state: str  # LOADING, AVAILABLE, END (TF Serving's ManagerState names)
    error: str = ""

    def as_json(self) -> dict:
        code = "UNKNOWN" if self.error else "OK"
        return {
            "version": str(self.version),
            "state": self.state,
            "status": {"error_code": code, "error_message": self.error},
        }


class VersionManager:
    """The table of loaded versions of one model, refreshed from disk by polling."""

    def __init__(self, model_name: str, base_path: Path, loader: Callable,
                 num_versions: int = 1, policy: VersionPolicy | None = None):
        self.model_name = model_name
        self.base_path = base_path
        self._loader = loader
        self.policy = policy or VersionPolicy("latest", num_versions=num_versions)
        self.labels: dict[str, int] = {}
        self._available: dict = {}  # version -> Servable
        self._states: dict[int, VersionState] = {}
        self._failed: dict[int, float] = {}  # version -> stamp of the attempt that failed
        self._refresh_lock = asyncio.Lock()

    # -- lookups used by request handlers -------------------------------------------------

    def resolve_label(self, label: str) -> int:
        """The version a label names (TF Serving answers INVALID_ARGUMENT for unknown ones)."""
        if label not in self.labels:
            known = ", ".join(sorted(self.labels)) or "none"
            raise RequestError(f"Unrecognized servable version label: {label} (model "
                               f"{self.model_name} has labels: {known})")
        return self.labels[label]

    def set_labels(self, labels: dict[str, int]) -> None:
        """Replace the labels; refused, as by TF Serving, if one names a version not loaded."""
        for label, version in sorted(labels.items()):
            if version not in self._available:
                loaded = ", ".join(map(str, sorted(self._available))) or "none"
                raise FailedPrecondition(
                    f"Request to assign label \"{label}\" to version {version} of model "
                    f"{self.model_name}, which is not currently available for inference "
                    f"(loaded: {loaded}). Point the label at a loaded version or change the "
                    "version policy so that version is loaded.")
        self.labels = dict(labels)

    def get(self, version: int | None = None):
        """The servable for `version`, or the highest available one when None."""
        if version is None:
            if not self._available:
                raise NotFound(f"Model {self.model_name} has no available version right now")
            return self._available[max(self._available)]
        servable = self._available.get(version)
        if servable is None:
            loaded = ", ".join(map(str, sorted(self._available))) or "none"
            raise NotFound(
                f"Version {version} of model {self.model_name} is not available "
                f"(available: {loaded})"
            )
        return servable

    def status(self, version: int | None = None) -> list[dict]:
        if version is None:
            rows = sorted(self._states.values(), key=lambda s: -s.version)
            return [s.as_json() for s in rows]
        if version not in self._states:
            raise NotFound(f"Version {version} of model {self.model_name} is not known")
        return [self._states[version].as_json()]

    def servables(self) -> list:
        return list(self._available.values())

    @property
    def available_versions(self) -> list[int]:
        return sorted(self._available)

    # -- refreshing from disk -------------------------------------------------------------

    async def refresh(self) -> None:
        """Bring the table in line with disk: load wanted versions, then drop unwanted ones."""
        async with self._refresh_lock:
            on_disk = await asyncio.to_thread(discover_versions, self.base_path)
            stamps = await asyncio.to_thread(lambda: {v: _stamp(p) for v, p in on_disk.items()})
            wanted: set[int] = set()
            # Newest first; a version that fails to load is skipped (until its files change)
            # so the next older one is served instead.
            latest = self.policy.kind == "latest"
            for version in self.policy.wanted(list(on_disk)):
                if latest and len(wanted) == self.policy.num_versions:
                    break
                if self._failed.get(version) == stamps[version]:
                    continue
                if version not in self._available:
                    await self._load(version, on_disk[version], stamps[version])
                if version in self._available:
                    wanted.add(version)
            self._unload_unwanted(wanted)

    async def _load(self, version: int, path: Path, stamp: float) -> None:
        self._states[version] = VersionState(version, "LOADING")
        try:
            servable = await asyncio.to_thread(self._loader, path, version)
        except Exception as exc:  # a broken version must not stop the server
            message = _summary(exc)
            self._failed[version] = stamp
            self._states[version] = VersionState(version, "END", message)
            log.error("failed to load %s version %d from %s: %s",
                      self.model_name, version, path, message)
            return
        self._failed.pop(version, None)
        self._available[version] = servable
        self._states[version] = VersionState(version, "AVAILABLE")
        log.info("loaded %s version %d from %s in %.2f s",
                 self.model_name, version, path, servable.load_seconds)

    def _unload_unwanted(self, keep: set[int]) -> None:
        # Never drop to zero versions: if no wanted version could be loaded, the old ones
        # keep serving until one can.
        if not keep:
            return
        for version in [v for v in self._available if v not in keep]:
            del self._available[version]
            self._states[version] = VersionState(version, "END")
            log.info("unloaded %s version %d", self.model_name, version)

    async def poll_forever(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.refresh()
            except Exception:  # e.g. the base path vanished for a moment: keep serving
                log.exception("polling %s failed; keeping the current versions", self.base_path)
