"""Shared fixtures: the real MNIST files, a TFDS data dir prepared once, tiny synthetic data."""

from __future__ import annotations

import collections
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Runs in tests skip the day's train rate (a few seconds each: tfpipeline/report/trainrate.py);
# the commands they start inherit it. tests/test_stage_times.py measures it where it is checked.
os.environ.setdefault("TFPIPELINE_TRAIN_RATE", "0")
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def pytest_collection_modifyitems(items):
    """Files with the most slow tests first, each file's tests in their own order. The two
    workers take whole files as they become free, so a long file taken last would leave the
    other worker idle until it ends; the quick unit-test files, taken last, even out the end."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # a stable sort: files stay whole


@pytest.fixture(scope="session")
def manual_dir() -> Path:
    """The four published MNIST files: $TFPIPELINE_MANUAL_DIR, else ../shared/data/mnist."""
    path = Path(os.environ.get("TFPIPELINE_MANUAL_DIR") or ROOT.parent / "shared" / "data" / "mnist")
    missing = [name for name in MNIST_FILES if not (path / name).is_file()]
    if missing:
        pytest.fail(
            f"The MNIST files are needed for these tests; {path} lacks {missing}. "
            "Set TFPIPELINE_MANUAL_DIR to a folder holding the four published files."
        )
    return path.resolve()


@pytest.fixture(scope="session")
def data_dir(manual_dir, tmp_path_factory) -> str:
    """A TFDS data dir with MNIST prepared (once per session, about 20 s, unless reused).

    The test workers (pyproject.toml's `-n`) share it: $TFDS_DATA_DIR, else one folder beside
    their own temporary folders. The first worker to take the lock prepares it; the others wait,
    then find it prepared, instead of writing the same files at the same time.
    """
    shared = tmp_path_factory.getbasetemp().parent if "PYTEST_XDIST_WORKER" in os.environ else None
    path = Path(os.environ.get("TFDS_DATA_DIR") or (shared or tmp_path_factory.getbasetemp()) / "tfds")
    path.mkdir(parents=True, exist_ok=True)
    from tfpipeline import data

    with open(path / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data.prepare("mnist", data_dir=str(path), manual_dir=manual_dir)
    return str(path)


@pytest.fixture
def tiny_images():
    """512 learnable 28x28x1 uint8 images: the label is which quadrant is bright."""
    return quadrant_images()


def quadrant_images() -> tuple[np.ndarray, np.ndarray]:
    """The `tiny_images` data, for module-scoped fixtures (which cannot take a function-scoped one)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=512)
    images = rng.integers(0, 60, size=(512, 28, 28, 1), dtype=np.uint8)
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 2)
        images[i, r * 14 : r * 14 + 14, c * 14 : c * 14 + 14] += 150
    return images, labels.astype(np.int32)


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m pipelines.mnist ARGS` in a real subprocess from `cwd`."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.mnist", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def exported_versions(cwd: Path) -> list[str]:
    """The versions `pipelines.mnist` exported under `cwd` (temporary or half-written ones included)."""
    base = cwd / "exported" / "mnist"
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


def exported_metadata(cwd: Path, version: int | str = 1) -> dict:
    """The metadata.json of version `version` that `pipelines.mnist` exported under `cwd`."""
    return json.loads((cwd / "exported" / "mnist" / str(version) / "metadata.json").read_text())
