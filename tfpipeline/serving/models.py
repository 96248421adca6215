"""The served models: one VersionManager per model name, replaced as a whole on a reload.

A reload (HandleReloadConfigRequest, or a changed --model_config_file) builds the new table
beside the old one: models whose name, base path and policy are unchanged keep their loaded
versions; new or changed ones are loaded first. A model none of whose versions loads stays in
the table with its versions in state END and their errors, as TF Serving reports it, and the
other models keep serving; this holds at start-up and on a reload alike. A label must point
at a loaded version, else the new table is refused and the server stays exactly as it was
(TF Serving likewise refuses such a config).
This module imports no TensorFlow: the loader is passed in.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .errors import FailedPrecondition, NotFound, RequestError
from .model_config import ModelSpec
from .versions import VersionManager, discover_versions

log = logging.getLogger("tfpipeline.serving")


class ModelRegistry:
    def __init__(self, loader: Callable):
        self._loader = loader
        self._specs: dict[str, ModelSpec] = {}
        self.managers: dict[str, VersionManager] = {}
        self._lock = asyncio.Lock()

    def manager(self, name: str) -> VersionManager:
        if not name:
            raise RequestError("ModelSpec has no name specified.")
        manager = self.managers.get(name)
        if manager is None:
            served = ", ".join(f'"{n}"' for n in sorted(self.managers)) or "none"
            raise NotFound(f"Servable not found for request: Latest({name}) (model \"{name}\" "
                           f"is not served here; served models: {served})")
        return manager

    def servable(self, name: str, version: int | None = None, label: str | None = None):
        manager = self.manager(name)
        if label is not None:
            version = manager.resolve_label(label)
        return manager.get(version)

    async def apply(self, specs: list[ModelSpec]) -> None:
        """Serve exactly `specs`. A model with no loadable version is kept with its END
        statuses and logged. Raises NotFound (a base path without versions) or
        FailedPrecondition (a label on a version that is not loaded) and then changes
        nothing."""
        async with self._lock:
            managers: dict[str, VersionManager] = {}
            created = []
            for spec in specs:
                old, old_spec = self.managers.get(spec.name), self._specs.get(spec.name)
                if old is not None and (old_spec.base_path, old_spec.policy) == (
                        spec.base_path, spec.policy):
                    managers[spec.name] = old
                    continue
                if not discover_versions(spec.base_path):
                    raise NotFound(
                        f"Model \"{spec.name}\": no versions found under base path "
                        f"{spec.base_path} (expected integer-named directories holding a "
                        "SavedModel, e.g. 1/saved_model.pb)")
                manager = VersionManager(spec.name, spec.base_path, self._loader,
                                         policy=spec.policy)
                managers[spec.name] = manager
                created.append(manager)
            await asyncio.gather(*(m.refresh() for m in created))
            for manager in created:
                if not manager.available_versions:
                    # As TF Serving: the model stays in the table with its versions' END
                    # status and error (GetModelStatus shows them) and the others serve.
                    failures = "; ".join(
                        f"version {s['version']}: {s['status']['error_message']}"
                        for s in manager.status()) or "no version matches its policy"
                    log.error("model %s: no version of %s could be loaded (%s); serving the "
                              "other models", manager.model_name, manager.base_path, failures)
            # Labels are checked against the new table before anything is switched.
            previous = {name: m.labels for name, m in managers.items()}
            try:
                for spec in specs:
                    managers[spec.name].set_labels(spec.labels)
            except FailedPrecondition:
                for name, labels in previous.items():
                    managers[name].labels = labels
                raise
            dropped = sorted(set(self.managers) - set(managers))
            self.managers = managers
            self._specs = {spec.name: spec for spec in specs}
            for name in dropped:
                log.info("unloaded model %s (no longer in the config)", name)
            for manager in created:
                log.info("serving model %s versions %s", manager.model_name,
                         manager.available_versions)

    async def refresh(self) -> None:
        """Look for new versions of every model (the file-system poll)."""
        for manager in list(self.managers.values()):
            try:
                await manager.refresh()
            except Exception:  # e.g. the base path vanished for a moment: keep serving
                log.exception("polling %s failed; keeping the current versions",
                              manager.base_path)

    async def poll_forever(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
            await self.refresh()
