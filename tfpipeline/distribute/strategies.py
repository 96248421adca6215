"""Which `tf.distribute` strategy a run uses, and what that means for batch size and paths.

    default       TensorFlow's default strategy: one device, no distribution machinery.
    mirrored      `MirroredStrategy`: one replica per local GPU, or per logical CPU device
                  when there is no GPU (`--cpu-devices N` splits the host CPU into N).
    multi_worker  `MultiWorkerMirroredStrategy`: one process per machine; the `TF_CONFIG`
                  environment variable (set for you by Kubeflow's TFJob and Vertex AI) names
                  every worker and says which one this process is.
    auto          multi_worker when TF_CONFIG names more than one worker, else mirrored when
                  more than one GPU is visible (or --cpu-devices N > 1 was asked), else default.

Batch size and learning rate. A model family's `batch_size` is *per replica*: every step
processes a global batch of per-replica batch × replicas (over all workers), so adding
replicas keeps each device's load and memory constant. The peak learning rate is scaled by
the same factor by default (the linear scaling rule, Goyal et al. 2017, "Accurate, Large
Minibatch SGD"; the schedule's warmup is what keeps the larger rate stable early on);
`sqrt` and `none` are there for optimizers or models that prefer gentler scaling. The
strategy, replicas, workers, global batch and effective learning rate all go into the
export's metadata.json.

Multi-worker file writes follow TensorFlow's documented pattern: only the chief writes to
the real paths (TensorBoard logs, checkpoints, the export); every other worker does the
same work but writes into a private temporary folder that is deleted when it exits.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfpipeline.distribute import LR_SCALING, STRATEGIES
from tfpipeline.errors import UserError

ENV_TF_CONFIG = "TF_CONFIG"

TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
)


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    """What TF_CONFIG says: how many workers train together and which one this process is."""

    workers: int  # every training task: the chief (if listed separately) plus the workers
    task_type: str
    task_index: int
    has_chief: bool  # a separate "chief" task; otherwise worker 0 is the chief

    @property
    def is_chief(self) -> bool:
        if self.has_chief:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0


def parse_tf_config(text: str | None) -> ClusterInfo | None:
    """Parse and check a TF_CONFIG value; None when it is unset or empty."""
    if not text or not text.strip():
        return None

    def bad(problem: str) -> UserError:
        return UserError(
            f"TF_CONFIG is not usable: {problem}. It must name every worker and this process's "
            f"place among them, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' (the same cluster on every "
            "worker, a different task index on each). Unset TF_CONFIG to train on one machine."
        )

    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(f"it is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise bad('it has no "cluster" object')
    cluster = config["cluster"]
    if "ps" in cluster:
        raise bad('it lists parameter servers ("ps"), which need ParameterServerStrategy; '
                  "this pipeline trains with MultiWorkerMirroredStrategy (workers only)")
    for role in ("chief", "worker"):
        addresses = cluster.get(role, [])
        if not isinstance(addresses, list) or not all(
            isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses
        ):
            raise bad(f'cluster "{role}" must be a list of "host:port" strings, got {addresses!r}')
    chiefs, workers = cluster.get("chief", []), cluster.get("worker", [])
    if len(chiefs) > 1:
        raise bad(f"it lists {len(chiefs)} chiefs; there can be at most one")
    if not chiefs and not workers:
        raise bad("its cluster lists no workers")
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task:
        raise bad('it has no "task" object saying which worker this process is')
    task_type, task_index = task.get("type"), task.get("index", 0)
    if task_type not in ("chief", "worker"):
        raise bad(f'task type {task_type!r} is not supported here; use "worker" (or "chief")')
    members = chiefs if task_type == "chief" else workers
    if not isinstance(task_index, int) or not 0 <= task_index < len(members):
        raise bad(f"task index {task_index!r} is not one of the {len(members)} {task_type}(s) listed")
    return ClusterInfo(len(chiefs) + len(workers), task_type, task_index, bool(chiefs))


def free_ports(n: int) -> list[int]:
    """Ports the OS says are free on 127.0.0.1, for servers that cannot take port 0 (a
    TF_CONFIG cluster, TensorBoard, the KerasTuner oracle). All are bound at once, so they
    differ; each is released before it is handed over."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_tf_configs(ports: list[int]) -> list[str]:
    """The TF_CONFIG of each worker of a cluster on this machine, one per port (worker 0, the
    chief, first): how the tests and `bench.distribution` run several workers on one host."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(len(ports))]


def resolve(requested: str, cluster: ClusterInfo | None, gpus: int, cpu_devices: int | None = None) -> str:
    """The strategy `--strategy REQUESTED` means on this machine: default, mirrored or multi_worker."""
    if requested not in STRATEGIES:
        raise UserError(f"Unknown --strategy {requested!r}. Choose one of: {', '.join(STRATEGIES)}.")
    if requested == "auto":
        if cluster is not None and cluster.workers > 1:
            return "multi_worker"
        if gpus > 1 or (cpu_devices or 1) > 1:
            return "mirrored"
        return "default"
    if requested == "multi_worker" and cluster is None:
        raise UserError(
            "--strategy multi_worker needs the TF_CONFIG environment variable to say which "
            f"workers train together, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' on worker 0 and the "
            "same with index 1 on worker 1. Kubeflow's TFJob and Vertex AI set it for you."
        )
    return requested


def scale_learning_rate(base: float, replicas: int, rule: str = "linear") -> float:
    """The peak learning rate for a global batch `replicas` times the per-replica batch."""
    if rule == "linear":
        return base * replicas
    if rule == "sqrt":
        return base * math.sqrt(replicas)
    if rule == "none":
        return base
    raise UserError(f"Unknown --lr-scaling {rule!r}. Choose one of: {', '.join(LR_SCALING)}.")


ENV_CPU_BFC = "TF_CPU_ALLOCATOR_USE_BFC"


def use_bfc_cpu_allocator(environ: dict | None = None) -> None:
    """Have TensorFlow keep and reuse its CPU memory (its BFC allocator) instead of malloc.

    With malloc, each step's large tensors are mapped fresh from the OS and unmapped when
    freed, and every new page is zeroed by the kernel on first touch. Under
    MirroredStrategy on several logical CPU devices this page-fault churn takes a large
    share of the CPU time; the BFC allocator, which holds on to what it has allocated,
    removes it (docs/benchmarks.md). TensorFlow reads the variable when it
    creates its CPU allocator (at the first tensor), so this must run before any op; an
    explicit setting in the environment wins.
    """
    environ = os.environ if environ is None else environ
    environ.setdefault(ENV_CPU_BFC, "true")


def split_cpu(devices: int) -> None:
    """Expose the host CPU as `devices` logical devices (so Mirrored has that many replicas).

    TensorFlow fixes its device list the first time anything touches a device, so this
    must run before any other TensorFlow call in the process.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if len(current or [None]) == devices:
        return  # already split this way (or one device asked, none split)
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
        )
    except RuntimeError as exc:
        raise UserError(
            f"--cpu-devices {devices} must take effect before TensorFlow initializes its devices, "
            f"and in this process it already has ({exc}). Run the pipeline in a fresh process (the "
            f"command line always does), or call tfpipeline.distribute.split_cpu({devices}) before "
            "any other TensorFlow call."
        ) from exc


@dataclasses.dataclass
class Distribution:
    """The strategy a run uses, and the facts about it the rest of the pipeline needs."""

    strategy: tf.distribute.Strategy
    kind: str  # "default", "mirrored" or "multi_worker"
    requested: str
    workers: int = 1
    task_type: str | None = None
    task_index: int | None = None
    is_chief: bool = True
    has_chief: bool = False  # TF_CONFIG lists a "chief" task apart from the workers
    cpu_devices: int | None = None
    lr_scaling: str = "linear"
    _scratch: Path | None = dataclasses.field(default=None, repr=False)

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def global_batch(self, per_replica: int) -> int:
        return per_replica * self.replicas

    def learning_rate(self, base: float) -> float:
        return scale_learning_rate(base, self.replicas, self.lr_scaling)

    @property
    def input_pipeline_id(self) -> int:
        """This worker's input pipeline, as `tf.distribute.InputContext.input_pipeline_id` numbers
        them: the chief 0, then the workers (worker i is i + 1 when a separate chief exists)."""
        if self.kind != "multi_worker" or self.task_type == "chief":
            return 0
        return (self.task_index or 0) + int(self.has_chief)

    @property
    def worker_name(self) -> str:
        return "" if self.kind != "multi_worker" else f"{self.task_type} {self.task_index}"

    def identity(self) -> dict:
        """What makes runs with different distributions different commands (for resume)."""
        return {"strategy": self.kind, "replicas": self.replicas, "workers": self.workers,
                "lr_scaling": self.lr_scaling}

    def to_json(self, per_replica_batch: int, base_learning_rate: float) -> dict:
        return {
            "strategy": self.kind,
            "requested": self.requested,
            "replicas": self.replicas,
            "workers": self.workers,
            "cpu_devices": self.cpu_devices,
            "per_replica_batch_size": per_replica_batch,
            "global_batch_size": self.global_batch(per_replica_batch),
            "base_learning_rate": base_learning_rate,
            "learning_rate_scaling": self.lr_scaling,
            "effective_learning_rate": self.learning_rate(base_learning_rate),
        }

    def describe(self, per_replica_batch: int, base_learning_rate: float) -> str:
        where = {
            "default": "one device",
            "mirrored": f"{self.replicas} local replicas",
            "multi_worker": f"{self.workers} workers, {self.replicas} replicas in all; "
                            f"this is {self.worker_name}{' (chief)' if self.is_chief else ''}",
        }[self.kind]
        return (
            f"Strategy {self.kind} ({where}): global batch {self.global_batch(per_replica_batch)} "
            f"= {per_replica_batch} per replica x {self.replicas}, peak learning rate "
            f"{self.learning_rate(base_learning_rate):g} ({self.lr_scaling} scaling of {base_learning_rate:g})."
        )

    def writable(self, path: str | os.PathLike) -> Path:
        """Where this process writes what belongs at `path`: `path` itself on the chief, a
        private temporary copy of it on any other worker (removed when the process exits)."""
        if self.is_chief:
            return Path(path)
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"tfpipeline-{self.task_type}{self.task_index}-"))
            atexit.register(shutil.rmtree, self._scratch, ignore_errors=True)
        path = Path(path)
        return self._scratch / path.relative_to(path.anchor) if path.is_absolute() else self._scratch / path


def setup(
    requested: str = "auto",
    *,
    cpu_devices: int | None = None,
    lr_scaling: str = "linear",
    environ: dict | None = None,
) -> Distribution:
    """Create the strategy. Call it first thing: both --cpu-devices and MultiWorkerMirrored
    must be configured before TensorFlow initializes its devices."""
    environ = os.environ if environ is None else environ
    if lr_scaling not in LR_SCALING:
        scale_learning_rate(1.0, 1, lr_scaling)  # raises the UserError
    cluster = parse_tf_config(environ.get(ENV_TF_CONFIG))
    gpus = len(tf.config.list_physical_devices("GPU"))  # does not initialize the devices
    kind = resolve(requested, cluster, gpus, cpu_devices)
    if kind != "default":
        # Only for the distributed paths, whose overhead it was. (One device gains a little
        # from it too; that is left to whoever owns the one-device defaults.)
        use_bfc_cpu_allocator()
    if cpu_devices and cpu_devices > 1:
        if kind == "multi_worker":
            raise UserError(
                "--cpu-devices applies to --strategy mirrored; with several workers each worker "
                "trains one replica on its CPU (or one per GPU). Drop --cpu-devices."
            )
        split_cpu(cpu_devices)
    if cluster is not None and cluster.workers > 1 and kind != "multi_worker":
        print(f"Note: TF_CONFIG names {cluster.workers} workers, but --strategy {requested} trains "
              "on this machine alone; every worker will train and export its own model.")

    if kind == "default":
        return Distribution(tf.distribute.get_strategy(), kind, requested, lr_scaling=lr_scaling)
    if kind == "mirrored":
        if gpus:
            strategy = tf.distribute.MirroredStrategy()  # every visible GPU
        else:
            strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
        return Distribution(strategy, kind, requested, cpu_devices=cpu_devices, lr_scaling=lr_scaling)
    try:
        # Reads TF_CONFIG and starts this worker's gRPC server; the workers meet at the
        # first collective operation (the broadcast of the initial weights).
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError) as exc:
        raise UserError(
            f"Could not start multi-worker training from TF_CONFIG ({exc}). The strategy must be "
            "created before TensorFlow initializes its devices (run the pipeline in a fresh "
            "process), and this worker's address in TF_CONFIG must be a free port on this host."
        ) from exc
    return Distribution(
        strategy, kind, requested, workers=cluster.workers, task_type=cluster.task_type,
        task_index=cluster.task_index, is_chief=cluster.is_chief, has_chief=cluster.has_chief, lr_scaling=lr_scaling,
    )


def weights_digest(model) -> str:
    """SHA-256 of all of a model's weights, in order: equal digests mean identical models."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def local_copy(model):
    """The same model with plain single-device variables, built outside any strategy scope.

    After multi-worker training, evaluating or exporting the distributed model would make
    every worker join in; the copy runs on the chief alone. Reading the weights is itself
    the last collective step, so every worker calls this.
    """
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy
