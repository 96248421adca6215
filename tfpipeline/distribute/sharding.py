"""Multi-worker training input: which worker reads which training examples.

Under `MultiWorkerMirroredStrategy` the training input is split one of two ways; every worker
prints which, and `metadata.json` records it under `distribution.input`:

* **files** (a folder dataset). `strategy.distribute_datasets_from_function` calls the
  function `training_input` returns once on each worker, with a `tf.distribute.InputContext`.
  The worker takes `Dataset.shard(num_input_pipelines, input_pipeline_id)` of the list of
  training file names (the same seeded order on every worker, so worker i of N takes files
  i, i + N, i + 2N, ...) before any file is read: it reads, decodes and caches its share
  only. The shares are disjoint and together are the whole training split. Each worker
  shuffles its share and batches it by the per-replica batch.
* **rows** (text over the cache budget, and tables): the loader itself reads only this
  worker's share of the training documents or rows (`data.load(..., shard=...)`), while it
  fits the vocabulary or the column statistics on the whole split, the same on every worker.
  Each share is repeated to the same count per epoch, as the files' shares are.
* **data** (a TFDS dataset; text held in memory). Every worker
  reads the whole split, and tf.data's auto-sharding
  by DATA keeps each worker's part of every global batch (`data.make_pipeline`), so the
  global batches are exactly those of a one-machine run. TFDS's own sharding by file
  (`tfds.ReadConfig(input_context=...)`) needs at least as many files as workers, and MNIST's
  prepared train split is a single file.

Every worker must run the same number of steps per epoch: one that ran out of batches before
the others would leave them waiting in the next all-reduce. Shares differ in size by at most
one file, so each worker repeats its own share up to `ShardPlan.examples_per_worker` examples
per epoch (a short share reads its first file twice): exactly `steps_per_epoch` batches per
local replica, the number the training settings derive from the whole split and the global
batch, with the last batch of an epoch equally short on every worker.

The bad-file scan before training (`folders.index`, which decodes every file once) is shared
the same way (`shared_scan`): each worker checks its share of the files and one all-reduce
gives every worker the whole result, so all agree on the usable files, the split and the
default input size.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from tfpipeline import data
from tfpipeline.data import folders
from tfpipeline.data.datasets import epoch_seed
from tfpipeline.errors import UserError

#: What `distribution.input` says for a dataset every worker reads whole (TFDS).
DATA_RULE = ("every worker reads and decodes the whole training split; tf.data auto-sharding by DATA "
             "keeps each worker's share of every global batch")
FILES_RULE = ("worker i of N reads training files i, i+N, i+2N, ... of the seeded file order "
              "(tf.data Dataset.shard by InputContext.input_pipeline_id), and decodes and caches only those; "
              "a shorter share repeats its first files so every worker has the same examples per epoch")


def names_digest(relative_paths) -> str:
    """SHA-256 of a set of file names (relative to the dataset folder), in any order."""
    return hashlib.sha256("\n".join(sorted(relative_paths)).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """How a folder's training files are shared among the workers (the same on every worker)."""

    workers: int
    training_files: int
    files: tuple[int, ...]  # per worker: its share of the training files
    files_sha256: tuple[str, ...]  # per worker: `names_digest` of its share
    examples_per_worker: int  # per epoch: each share repeated to this many
    batches_per_worker: int  # per epoch: steps per epoch x replicas per worker
    per_replica_batch: int

    def to_json(self) -> dict:
        return {
            "sharding": "files",
            "rule": FILES_RULE,
            "workers": [{"worker": i, "files": self.files[i], "repeated": self.examples_per_worker - self.files[i],
                         "files_sha256": self.files_sha256[i]} for i in range(self.workers)],
            "training_files": self.training_files,
            "examples_per_worker_per_epoch": self.examples_per_worker,
            "batches_per_worker_per_epoch": self.batches_per_worker,
            "per_replica_batch_size": self.per_replica_batch,
        }


def plan(paths: list[str], root: str | Path, *, workers: int, replicas: int, per_replica_batch: int,
         steps_per_epoch: int) -> ShardPlan:
    """Share `paths` among `workers` so that each runs `steps_per_epoch` steps per epoch.

    Args:
        paths: the training files, in the order every worker lists them.
        root: the dataset folder (the digests are of names relative to it).
        workers: the number of input pipelines (one per worker).
        replicas: replicas over all workers (each worker has `replicas // workers`).
        per_replica_batch: examples per replica per step.
        steps_per_epoch: what the training settings derive from all of `paths` and the global batch.
    """
    if len(paths) < workers:
        raise UserError(
            f"The folder dataset has {len(paths)} training image{'s' if len(paths) != 1 else ''} for "
            f"{workers} workers; each worker trains on its own share of the files, so it needs at least "
            "one per worker. Add images, or train on fewer workers."
        )
    batches = steps_per_epoch * (replicas // workers)
    shares = [paths[i::workers] for i in range(workers)]  # what Dataset.shard(workers, i) yields
    # The largest share, ceil(n / N) files, fits steps x R batches of b (steps = ceil(n / (N R b)),
    # R replicas per worker); every share is repeated to the same count, and to enough examples
    # that none of those batches is empty.
    examples = max(len(shares[0]), (batches - 1) * per_replica_batch + 1)
    if examples > batches * per_replica_batch:
        raise ValueError(f"{len(paths)} training files in {batches} batches of {per_replica_batch} per worker "
                         f"do not fit {steps_per_epoch} steps per epoch; derive the steps from the same "
                         "files and global batch (training.settings_for).")
    root = Path(root)
    return ShardPlan(
        workers=workers, training_files=len(paths), files=tuple(len(s) for s in shares),
        files_sha256=tuple(names_digest(Path(p).relative_to(root).as_posix() for p in s) for s in shares),
        examples_per_worker=examples, batches_per_worker=batches, per_replica_batch=per_replica_batch,
    )


def training_input(datasets: data.Datasets, train, *, workers: int, replicas: int, per_replica_batch: int,
                   steps_per_epoch: int, seed: int, augmentation=None, epochs: int | None = None,
                   examples: tf.data.Dataset | None = None):
    """What multi-worker training reads, and its record for `metadata.json` (`distribution.input`).

    Args:
        datasets: the run's `data.Datasets`.
        train: what every worker would read whole (kept for TFDS): the batched training
            dataset, or a function of the first epoch that gives it (`multiworker.fit`).
        workers, replicas, per_replica_batch, steps_per_epoch, seed: as the run trains.
        augmentation: the family's `augmentation.Augmentation` (`models.augmentation`), or None.
        epochs: the run's epochs: each epoch of a worker's share is shuffled and shifted by
            (seed, worker, epoch) alone (`data.make_pipeline`'s per-epoch stream).
        examples: the unbatched training examples as trained (a table's with their class
            weights): for text and tables read per worker, this worker's share.

    Returns:
        `(train, {"sharding": "data", ...})` for a TFDS dataset; for a folder dataset
        `(input_from, ShardPlan.to_json())`, where `input_from(first_epoch)` is the input
        function for `strategy.distribute_datasets_from_function`: given a
        `tf.distribute.InputContext`, the worker's own endless, batched share of the files from
        epoch `first_epoch` on.
    """
    share = datasets.spec.source.get("shard")
    if share:  # text or a table that the loader read per worker: `examples` is this worker's share
        return _pre_sharded(examples if examples is not None else datasets.train, datasets, share,
                            batches=steps_per_epoch * (replicas // workers), per_replica_batch=per_replica_batch,
                            seed=seed, epochs=epochs)
    if datasets.train_files is None:
        print(f"Input: {DATA_RULE} ({datasets.spec.source.get('kind', 'tfds')} data, not files read per worker).",
              flush=True)
        return train, {"sharding": "data", "rule": DATA_RULE}
    paths, _ = datasets.train_files
    shards = plan(paths, datasets.spec.source["path"], workers=workers, replicas=replicas,
                  per_replica_batch=per_replica_batch, steps_per_epoch=steps_per_epoch)
    return _input_from(datasets, shards, seed, augmentation, epochs), shards.to_json()


def _input_from(datasets: data.Datasets, shards: ShardPlan, seed: int, augmentation=None,
                epochs: int | None = None) -> Callable[[int], Callable[[tf.distribute.InputContext], tf.data.Dataset]]:
    paths, labels = datasets.train_files
    root = Path(datasets.spec.source["path"])
    height, width, channels = datasets.spec.input_shape
    cache = datasets.cache_plan

    def input_fn(context: tf.distribute.InputContext, first_epoch: int = 0) -> tf.data.Dataset:
        i, n = context.input_pipeline_id, context.num_input_pipelines
        batch = context.get_per_replica_batch_size(shards.per_replica_batch * context.num_replicas_in_sync)
        # Sharded while still file names: the files of the other shares are never read here.
        share = folders.file_list(paths, labels).shard(n, i)
        names = [Path(p.decode()).relative_to(root).as_posix()
                 for chunk in share.map(lambda path, _: path).batch(8192) for p in chunk.numpy()]
        repeated = shards.examples_per_worker - len(names)
        print(f"Input: worker {i} of {n} reads {len(names):,} of the {len(paths):,} training files, its "
              f"tf.data shard (sha256 of their names {names_digest(names)})"
              + (f", {repeated} of them a second time" if 0 < repeated <= len(names) else
                 ", repeated to fill" if repeated else "")
              + f": {shards.examples_per_worker:,} examples, {shards.batches_per_worker} batches of {batch} "
              "per epoch, as on every worker.", flush=True)
        examples = folders.decode(share.repeat().take(shards.examples_per_worker), (height, width), channels)
        if cache is not None and cache.kind == "disk":  # this worker's share only, in a file of its own
            examples = examples.cache(str(Path(cache.directory) / f"train-worker{i}-of-{n}"))
        per_epoch = -(-shards.examples_per_worker // batch)
        if per_epoch != shards.batches_per_worker:
            raise ValueError(f"Worker {i}'s share makes {per_epoch} batches per epoch, "
                             f"not the planned {shards.batches_per_worker}.")
        # A memory cache if the plan says so. Each epoch's order and shifts are fixed by (seed,
        # worker, epoch), so a resumed run reads from `first_epoch` what an uninterrupted one
        # would; the worker's own seed keeps its shifts apart from the other workers'.
        own_seed = seed if i == 0 else epoch_seed(seed, i)
        return datasets.batched(examples, batch_size=batch, seed=own_seed, training=True, own_splits=False,
                                first_epoch=first_epoch, end_epoch=epochs,
                                per_batch=augmentation.per_batch(own_seed) if augmentation else None)

    return lambda first_epoch: functools.partial(input_fn, first_epoch=first_epoch)


def _pre_sharded(examples: tf.data.Dataset, datasets: data.Datasets, share: dict, *, batches: int,
                 per_replica_batch: int, seed: int, epochs: int | None):
    """`training_input` for a share the loader already read (`share`: `spec.source["shard"]`,
    with `worker`, `workers`, and its size under `rows` or `documents`): repeated, as the files'
    shares are, to the same examples per epoch on every worker; each epoch shuffled by (seed,
    worker, epoch). `distribute_datasets_from_function` applies no auto-sharding, which data
    already shared out must not get."""
    worker, workers = share["worker"], share["workers"]
    size = share.get("rows", share.get("documents"))
    total = datasets.spec.num_examples["train"]
    per_worker = max(-(-total // workers), (batches - 1) * per_replica_batch + 1)
    if per_worker > batches * per_replica_batch:
        raise ValueError(f"{total} training examples in {batches} batches of {per_replica_batch} per worker "
                         "do not fit the steps per epoch; derive them from the same split and global batch.")
    record = {"sharding": "rows", "rule": share.get("rule", ""), "worker": worker, "workers": workers,
              "examples": size, "repeated": per_worker - size, "examples_per_worker_per_epoch": per_worker,
              "batches_per_worker_per_epoch": batches, "per_replica_batch_size": per_replica_batch}
    print(f"Input: worker {worker} of {workers} trains on its own {size:,} of the {total:,} training examples "
          f"(read by the loader), repeated to {per_worker:,}: {batches} batches per epoch, as on every worker.",
          flush=True)

    def input_fn(context: tf.distribute.InputContext, first_epoch: int = 0) -> tf.data.Dataset:
        if (context.input_pipeline_id, context.num_input_pipelines) != (worker, workers):
            raise ValueError(f"The loader read worker {worker} of {workers}'s share, but this input pipeline is "
                             f"{context.input_pipeline_id} of {context.num_input_pipelines}.")
        batch = context.get_per_replica_batch_size(per_replica_batch * context.num_replicas_in_sync)
        # Read to its end before repeating (so a disk cache completes), then its first examples again.
        padded = examples.concatenate(examples.repeat().take(per_worker - size))
        own_seed = seed if worker == 0 else epoch_seed(seed, worker)
        return datasets.batched(padded, batch_size=batch, seed=own_seed, training=True, own_splits=False,
                                first_epoch=first_epoch, end_epoch=epochs)

    return (lambda first_epoch: functools.partial(input_fn, first_epoch=first_epoch)), record


def shared_scan(dist) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]] | None:
    """A scanner for `folders.index` that shares the bad-file scan among the workers; None
    unless `dist` (a `distribute.Distribution`) is multi-worker.

    Replica r of R checks files r, r+R, r+2R, ... with `folders.scan`; one all-reduce sums what
    the replicas found into the whole result, the same on every worker. The same all-reduce
    checks that every worker lists the same files: sharing them out by position needs that.
    """
    if dist.kind != "multi_worker":
        return None
    strategy = dist.strategy

    def scanner(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        replicas = strategy.num_replicas_in_sync
        base = os.path.commonpath(paths) if paths else ""
        names = "\n".join(os.path.relpath(p, base) for p in paths)
        listing = int.from_bytes(hashlib.sha256(names.encode()).digest()[:3], "big")  # < 2**24
        # First the listings alone (the results below have one row per file, so they can only
        # be summed when the lists agree): equal on all replicas exactly when the variance of
        # their digests is 0.
        sums = _sum_over_replicas(strategy, strategy.experimental_distribute_values_from_function(
            lambda _: tf.constant([listing, listing**2], tf.int64)))
        if sums[1] * replicas != sums[0] ** 2:
            raise UserError(
                f"The workers do not list the same files in the dataset folder ({len(paths):,} files here, "
                f"under {base}). Each worker checks and trains on its share of the files by their position "
                "in the list, so every worker needs the same copy of the folder: a shared volume or "
                "identical copies."
            )
        checked = []

        def local(context: tf.distribute.ValueContext) -> tf.Tensor:
            mine = np.arange(context.replica_id_in_sync_group, len(paths), context.num_replicas_in_sync)
            good, shapes = folders.scan([paths[i] for i in mine])
            found = np.zeros((len(paths), 4), np.int64)  # per file: decodes (1 or 0), h, w, c
            found[mine[good], 0] = 1
            found[mine[good], 1:] = shapes
            checked.append(len(mine))
            return tf.constant(found)

        total = _sum_over_replicas(strategy, strategy.experimental_distribute_values_from_function(local))
        print(f"Bad-file scan: this worker checked {sum(checked):,} of the {len(paths):,} files, its share; "
              f"an all-reduce gave every worker the results for all of them.", flush=True)
        good = np.flatnonzero(total[:, 0])
        return good, total[good, 1:]

    return scanner


def _sum_over_replicas(strategy: tf.distribute.Strategy, values) -> np.ndarray:
    """The sum of a per-replica tensor over every replica of every worker, as NumPy."""

    def replica_sum(value):
        # identity: on the replica's device (a constant made outside has none, and all_reduce needs one).
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(value))

    result = tf.function(lambda v: strategy.run(replica_sum, args=(v,)))(values)
    return strategy.experimental_local_results(result)[0].numpy()
