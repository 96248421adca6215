"""Multi-worker training on a folder dataset: each worker reads only its own share of the
training files, the shares are disjoint and make up the whole training split, and every
worker runs the same batches per epoch. The folders are drawn by the tests."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from folder_factory import add_broken, split_folder

from tests.conftest import ROOT
from tfpipeline import data
from tfpipeline.data import folders, imaging
from tfpipeline.distribute import free_ports, local_tf_configs, sharding
from tfpipeline.errors import UserError

INPUT_LINE = re.compile(r"Input: worker (\d) of 2 reads (\d+) of the (\d+) training files, its tf.data shard "
                        r"\(sha256 of their names ([0-9a-f]{64})\)")
DIGEST = re.compile(r"Final weights sha256 ([0-9a-f]{64})")
SCAN_LINE = re.compile(r"Bad-file scan: this worker checked (\d+) of the (\d+) files")


def pixels_to_files(paths, root: Path, size, channels) -> dict[bytes, str]:
    """sha256 of each file's decoded, resized pixels → its name: tells which file an example is."""
    out = {}
    for path in paths:
        image = imaging.prepare(tf.io.read_file(str(path)), size, channels).numpy()
        out[hashlib.sha256(image.tobytes()).digest()] = Path(path).relative_to(root).as_posix()
    return out


def names_of(images, lookup) -> list[str]:
    return [lookup[hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()] for image in images]


# --- the plan ----------------------------------------------------------------------------

@pytest.mark.parametrize("files,workers,local,batch", [(69, 2, 1, 8), (3000, 2, 1, 32), (65, 2, 1, 32),
                                                       (100, 3, 1, 7), (50, 2, 2, 4), (5, 2, 4, 8)])
def test_plan_shares_are_disjoint_whole_and_fill_the_same_batches(files, workers, local, batch):
    root = Path("/data")
    paths = [str(root / f"c/{i:04d}.png") for i in range(files)]
    steps = math.ceil(files / (workers * local * batch))  # what training.settings_for derives
    plan = sharding.plan(paths, root, workers=workers, replicas=workers * local, per_replica_batch=batch,
                         steps_per_epoch=steps)
    assert sum(plan.files) == files and max(plan.files) - min(plan.files) <= 1
    assert plan.batches_per_worker == steps * local == math.ceil(plan.examples_per_worker / batch)
    assert plan.examples_per_worker >= max(plan.files)
    # The plan's digests are those of what tf.data's Dataset.shard gives each worker.
    names = [p.relative_to(root).as_posix() for p in map(Path, paths)]
    shards = [[n.decode() for n in tf.data.Dataset.from_tensor_slices(names).shard(workers, i).as_numpy_iterator()]
              for i in range(workers)]
    assert [sharding.names_digest(s) for s in shards] == list(plan.files_sha256)
    assert sorted(sum(shards, [])) == sorted(names)
    record = plan.to_json()
    assert record["sharding"] == "files" and [w["files"] for w in record["workers"]] == list(plan.files)


def test_fewer_files_than_workers_is_a_user_error():
    with pytest.raises(UserError, match="1 training image for 2 workers"):
        sharding.plan(["/d/a.png"], "/d", workers=2, replicas=2, per_replica_batch=8, steps_per_epoch=1)


def test_each_worker_input_decodes_only_its_share(tmp_path):
    root = split_folder(tmp_path / "shapes", train=9, test=2)
    datasets = data.load(str(root), image_size=(12, 12), channels=3, work_dir=tmp_path / "work", seed=3)
    paths, _ = datasets.train_files
    steps = math.ceil(len(paths) / 8)
    train, record = sharding.training_input(datasets, None, workers=2, replicas=2, per_replica_batch=4,
                                            steps_per_epoch=steps, seed=3)
    assert callable(train) and record["training_files"] == len(paths) == datasets.spec.num_examples["train"] > 16
    lookup = pixels_to_files(paths, root, (12, 12), 3)
    shares, sizes = [], []
    for worker in (0, 1):
        ds = train(0)(tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker,
                                                 num_replicas_in_sync=2))
        batches = list(ds.take(record["batches_per_worker_per_epoch"]))
        sizes.append([int(x.shape[0]) for x, _ in batches])
        shares.append(names_of(np.concatenate([x.numpy() for x, _ in batches]), lookup))
    assert sizes[0] == sizes[1] and len(sizes[0]) == steps  # the same batches on both workers
    assert set(shares[0]).isdisjoint(shares[1])
    assert set(shares[0]) | set(shares[1]) == set(lookup.values())
    assert [sharding.names_digest(set(s)) for s in shares] == [w["files_sha256"] for w in record["workers"]]

    # Worker 0 never opens a file of worker 1's share: with one of them gone, only worker 1 fails.
    (root / shares[1][0]).unlink()
    context = lambda i: tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2)
    assert len(list(train(0)(context(0)).take(steps))) == steps
    with pytest.raises(tf.errors.NotFoundError, match=shares[1][0]):
        list(train(0)(context(1)).take(steps))


# --- two workers ---------------------------------------------------------------------------

def start_worker(index: int, ports, args, cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CONFIG": local_tf_configs(ports)[index],
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-u", "-m", "pipelines.images", *args], cwd=cwd, env=env,
                            stdout=open(cwd.parent / f"worker{index}.log", "w"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def cached_images(cwd: Path, worker: int, shape) -> np.ndarray:
    """The examples a worker decoded and cached on disk: tf.data's cache file, read back."""
    (index,) = cwd.glob(f"work/shapes/cache/*/train-worker{worker}-of-2.index")
    empty = tf.data.Dataset.from_tensors((tf.zeros(shape, tf.uint8), tf.constant(0, tf.int32))).take(0)
    return np.stack([x.numpy() for x, _ in empty.cache(str(index.with_suffix("")))])


def run_workers(tmp_path: Path, roots, args) -> tuple[list[int], list[str]]:
    """Two workers, each with its own folder, its own copy of the data and its own log."""
    ports = free_ports(2)
    workers = [start_worker(i, ports, ["--dataset", str(roots[i]), *args], tmp_path / f"worker{i}") for i in (0, 1)]
    for worker in workers:
        worker.wait(timeout=300)
    return [w.returncode for w in workers], [(tmp_path / f"worker{i}.log").read_text() for i in (0, 1)]


@pytest.mark.slow
def test_two_workers_read_disjoint_shares_of_a_folder(tmp_path):
    root = split_folder(tmp_path / "shapes", train=25, test=8)  # 69 training files after validation
    add_broken(root / "train" / "circle", np.random.default_rng(1))  # found by the shared scan
    # Each worker has its own copy of the folder, at another path, as on two machines.
    copy = shutil.copytree(root, tmp_path / "worker1" / "data" / "shapes")
    # --cache-budget 0: each worker caches what it decodes on disk, where the test can read it.
    args = ["--no-tune", "--epochs", "2", "--model", "mlp", "--hparam", "units=16", "--image-size", "16x16",
            "--channels", "3", "--batch-size", "8", "--cache-budget", "0", "--histogram-freq", "0"]
    codes, logs = run_workers(tmp_path, [root, copy], args)
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    # The scan of the 101 image-named files was shared: 51 here, 50 there, the same verdict on both.
    scans = [SCAN_LINE.search(log).groups() for log in logs]
    assert scans == [("51", "101"), ("50", "101")]
    assert all("Skipped 6 files" in log for log in logs)
    digests = [DIGEST.search(log).group(1) for log in logs]
    assert digests[0] == digests[1], "the workers ended with different weights"
    lines = [INPUT_LINE.search(log) for log in logs]
    assert [int(m.group(1)) for m in lines] == [0, 1], logs[1][-3000:]

    meta = json.loads((tmp_path / "worker0" / "exported" / "shapes" / "1" / "metadata.json").read_text())
    assert meta["export"]["verified_test_accuracy"] == meta["metrics"]["test"]["accuracy"]
    assert meta["distribution"]["weights_sha256"] == digests[0]
    assert not (tmp_path / "worker1" / "exported").exists()
    record = meta["distribution"]["input"]
    split = folders.index(root, validation_fraction=0.1, seed=42)
    n = len(split.files["train"])  # the hash threshold's draw: about 80 of the 101 files, less the skipped
    half = math.ceil(n / 2)
    assert record["sharding"] == "files" and record["training_files"] == meta["dataset"]["num_examples"]["train"] == n
    assert [w["files"] for w in record["workers"]] == [int(m.group(2)) for m in lines] == [half, n - half]
    assert [w["files_sha256"] for w in record["workers"]] == [m.group(4) for m in lines]
    # `half` examples per worker and epoch (worker 1 reads one file twice when n is odd), in batches of 8.
    assert meta["training"]["steps_per_epoch"] == record["batches_per_worker_per_epoch"] == math.ceil(n / 16)
    assert meta["training"]["steps_run"] == 2 * math.ceil(n / 16)
    assert meta["dataset"]["source"]["skipped"]["undecodable"] == 2

    # What each worker really decoded: its disk cache, matched to the files by their pixels.
    lookup = pixels_to_files(split.files["train"], root, (16, 16), 3)
    shares = [names_of(cached_images(tmp_path / f"worker{i}", i, (16, 16, 3)), lookup) for i in (0, 1)]
    assert [len(s) for s in shares] == [half, half] and [len(set(s)) for s in shares] == [half, n - half]
    assert set(shares[0]).isdisjoint(shares[1])
    assert set(shares[0]) | set(shares[1]) == set(lookup.values())  # the whole training split
    assert [sharding.names_digest(set(s)) for s in shares] == [m.group(4) for m in lines]


@pytest.mark.slow
def test_workers_that_list_different_files_stop_with_a_clear_error(tmp_path):
    root = split_folder(tmp_path / "shapes", train=6, test=2)
    copy = shutil.copytree(root, tmp_path / "worker1" / "data" / "shapes")
    next((copy / "train" / "circle").glob("*.png")).unlink()
    codes, logs = run_workers(tmp_path, [root, copy], ["--no-tune", "--epochs", "1", "--model", "mlp"])
    assert codes == [2, 2], logs[0][-3000:]
    for log in logs:
        assert "The workers do not list the same files" in " ".join(log.split()) and "Traceback" not in log
