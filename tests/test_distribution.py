"""Distribution strategies end to end: real processes, real ports, real SIGKILLs.

Tiny runs (quick mode: 3,000 training images; a 32-unit MLP) so the whole file stays within
a few minutes on two cores. Two-worker runs are two `python -m pipelines.mnist` processes on
127.0.0.1 with TF_CONFIG on free ports, each in its own folder and its own TMPDIR (as on
two machines): they share nothing but the network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, exported_metadata, exported_versions, run_cli
from tfpipeline import distribute, models
from tfpipeline.errors import UserError

# No shifts: they are the MLP's default for 20 epochs of full MNIST, and cost a 32-unit MLP
# over 3 epochs of 3,000 images the accuracy these tests compare.
TINY = ["--quick", "--model", "mlp", "--hparam", "units=32", "--hparam", "augment=0", "--histogram-freq", "0"]
# The default family, small: batch norm and weight averaging (the CNN's ema_momentum) on.
TINY_CNN = ["--quick", "--model", "cnn", "--hparam", "filters=[4,8]", "--hparam", "dense_units=16",
            "--histogram-freq", "0"]
DIGEST = re.compile(r"Final weights sha256 ([0-9a-f]{64})")
RESUMED = re.compile(r"Resuming training from epoch (\d+)/(\d+)")


# --- helpers -------------------------------------------------------------------------------

class Process:
    """`python -m pipelines.mnist ARGS` in the background, its output collected line by line."""

    def __init__(self, args, cwd: Path, env: dict, module: str = "pipelines.mnist"):
        cwd.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", module, *args],
            cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output[-3000:]}") from None
            if line is None:
                raise AssertionError(f"exited before {pattern!r}:\n{self.output[-3000:]}")
            if re.search(pattern, line):
                return

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def finish(self, timeout: float = 300) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        deadline = time.monotonic() + 10
        while self._queue.get(timeout=max(0.0, deadline - time.monotonic())) is not None:
            pass
        assert self.proc.returncode == 0, self.output[-4000:]
        return self.output


def start_workers(base: Path, args, env: dict, n: int = 2, module: str = "pipelines.mnist") -> list[Process]:
    """n workers, each in its own folder with its own TMPDIR (to see what it leaves behind)."""
    configs = distribute.local_tf_configs(distribute.free_ports(n))
    workers = []
    for i in range(n):
        tmp = base / f"tmp{i}"
        tmp.mkdir(parents=True, exist_ok=True)
        worker_env = {**env, "TF_CONFIG": configs[i], "TMPDIR": str(tmp)}
        workers.append(Process(args, base / f"worker{i}", worker_env, module))
    return workers


@pytest.fixture(scope="module")
def env(manual_dir, data_dir):
    return {"TFPIPELINE_MANUAL_DIR": str(manual_dir), "TFDS_DATA_DIR": data_dir}


# --- strategy selection (no processes) -------------------------------------------------------

def cluster(n: int, index: int = 0) -> distribute.ClusterInfo:
    return distribute.parse_tf_config(distribute.local_tf_configs([2000 + i for i in range(n)])[index])


def test_auto_without_tf_config_is_one_device():
    assert distribute.parse_tf_config(None) is None and distribute.parse_tf_config("") is None
    assert distribute.resolve("auto", None, gpus=0) == "default"
    assert distribute.resolve("auto", None, gpus=1) == "default"
    assert distribute.resolve("auto", None, gpus=2) == "mirrored"
    assert distribute.resolve("auto", None, gpus=0, cpu_devices=2) == "mirrored"


def test_auto_with_tf_config_is_multi_worker():
    assert distribute.resolve("auto", cluster(2), gpus=0) == "multi_worker"
    assert distribute.resolve("auto", cluster(3, 2), gpus=2) == "multi_worker"
    # A one-worker cluster is one machine: the local rule applies.
    assert distribute.resolve("auto", cluster(1), gpus=0) == "default"
    # An explicit choice wins.
    assert distribute.resolve("mirrored", cluster(2), gpus=0) == "mirrored"
    assert distribute.resolve("default", cluster(2), gpus=0) == "default"


def test_tf_config_roles():
    assert cluster(2, 0).is_chief and not cluster(2, 1).is_chief and cluster(2, 1).workers == 2
    with_chief = distribute.parse_tf_config(json.dumps(
        {"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]}, "task": {"type": "worker", "index": 0}}))
    assert with_chief.workers == 3 and not with_chief.is_chief  # the separate chief is the chief


@pytest.mark.parametrize("text, phrase", [
    ("{not json", "not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'no "cluster"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', 'no "task"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "task index 2"),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     "ParameterServerStrategy"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}', "not supported"),
])
def test_bad_tf_config_is_explained(text, phrase):
    with pytest.raises(UserError, match=re.escape(phrase)) as info:
        distribute.parse_tf_config(text)
    assert "TF_CONFIG=" in str(info.value)  # shows what a good one looks like


def test_multi_worker_without_tf_config_is_explained():
    with pytest.raises(UserError, match="needs the TF_CONFIG"):
        distribute.resolve("multi_worker", None, gpus=0)


def test_learning_rate_scaling():
    assert distribute.scale_learning_rate(1e-3, 4) == pytest.approx(4e-3)
    assert distribute.scale_learning_rate(1e-3, 4, "sqrt") == pytest.approx(2e-3)
    assert distribute.scale_learning_rate(1e-3, 4, "none") == pytest.approx(1e-3)


def test_help_explains_the_flags():
    from tfpipeline.cli import build_parser

    text = build_parser().format_help()
    for phrase in ("--strategy", "--cpu-devices", "--lr-scaling", "batch size per replica", "TF_CONFIG"):
        assert phrase in text


def test_cpu_devices_too_late_is_explained():
    import tensorflow as tf

    tf.config.list_logical_devices()  # initializes the devices, as any TF work would
    with pytest.raises(UserError, match="before TensorFlow initializes its devices"):
        distribute.split_cpu(len(tf.config.list_logical_devices("CPU")) + 1)


ALLOCATOR_PROBE = """
import sys
import tensorflow as tf
from tfpipeline import distribute
distribute.setup(sys.argv[1], cpu_devices=int(sys.argv[2]), environ={})
tf.ones([4096]) + 1.0
# Only a BFC allocator keeps these statistics: without one TensorFlow raises ValueError, or
# (as here since 2026-12-01) reports a peak of 0 bytes.
try:
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
except ValueError:
    peak = 0
print("BFC" if peak > 0 else "malloc")
"""


@pytest.mark.slow
@pytest.mark.parametrize("strategy, cpu_devices, allocator", [("mirrored", 2, "BFC"), ("default", 1, "malloc")])
def test_distributed_strategies_keep_their_cpu_memory(strategy, cpu_devices, allocator):
    """The distributed paths use TensorFlow's BFC allocator (malloc's page-fault churn was
    most of their overhead); the one-device path is left as it was."""
    env = {k: v for k, v in os.environ.items() if k != distribute.ENV_CPU_BFC}
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE, strategy, str(cpu_devices)], cwd=ROOT,
                         env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == allocator


# --- mirrored over 2 CPU devices --------------------------------------------------------------

@pytest.fixture(scope="module")
def mirrored_and_default(tmp_path_factory, env):
    """The same tiny training on one device and mirrored over two logical CPU devices."""
    args = TINY + ["--epochs", "3", "--batch-size", "32"]
    cwd = tmp_path_factory.mktemp("mirrored")
    (cwd / "default").mkdir()
    (cwd / "mirror").mkdir()
    single = run_cli(*args, "--strategy", "default", cwd=cwd / "default", env=env)
    mirrored = run_cli(*args, "--strategy", "mirrored", "--cpu-devices", "2", cwd=cwd / "mirror", env=env)
    return cwd, single, mirrored


@pytest.mark.slow
def test_mirrored_trains_two_replicas_and_exports(mirrored_and_default):
    cwd, single, mirrored = mirrored_and_default
    assert mirrored.returncode == 0, mirrored.stdout[-3000:] + mirrored.stderr[-3000:]
    assert "Strategy mirrored (2 local replicas): global batch 64 = 32 per replica x 2" in mirrored.stdout
    meta = exported_metadata(cwd / "mirror")
    dist = meta["distribution"]
    assert (dist["strategy"], dist["replicas"], dist["workers"], dist["global_batch_size"]) == ("mirrored", 2, 1, 64)
    assert dist["effective_learning_rate"] == pytest.approx(2 * dist["base_learning_rate"])
    assert meta["training"]["epochs_run"] == 3
    assert meta["training"]["steps_per_epoch"] == -(-3000 // 64)  # global batches
    assert meta["export"]["verified_test_accuracy"] == meta["metrics"]["test"]["accuracy"]
    logdir = cwd / "mirror" / meta["run"]["logdir"]
    assert (logdir / "train").is_dir() and (logdir / "validation").is_dir()


@pytest.mark.slow
def test_mirrored_reaches_the_single_device_accuracy(mirrored_and_default):
    cwd, single, mirrored = mirrored_and_default
    assert single.returncode == 0 and mirrored.returncode == 0
    one = exported_metadata(cwd / "default")
    two = exported_metadata(cwd / "mirror")
    assert one["distribution"]["strategy"] == "default" and one["distribution"]["global_batch_size"] == 32
    a, b = one["metrics"]["test"]["accuracy"], two["metrics"]["test"]["accuracy"]
    assert a > 0.85 and b > 0.85
    assert abs(a - b) < 0.03, (a, b)


@pytest.mark.slow
def test_the_default_cnn_trains_mirrored(tmp_path, env):
    """The current default CNN itself (its defaults, its frozen first epoch and its shifts), not a
    tiny stand-in, under MirroredStrategy over two logical CPU devices; --quick keeps it short."""
    proc = run_cli("--quick", "--strategy", "mirrored", "--cpu-devices", "2", "--epochs", "2",
                   "--histogram-freq", "0", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = exported_metadata(tmp_path)
    assert meta["model"]["family"] == "cnn" and meta["distribution"]["replicas"] == 2
    defaults = dataclasses.asdict(models.hyperparams("cnn", {"epochs": 2}))
    assert meta["model"]["hyperparameters"] == json.loads(json.dumps(defaults))
    assert meta["training"]["epochs_run"] == 2 and meta["metrics"]["test"]["accuracy"] > 0.5


# --- two workers -------------------------------------------------------------------------------

# Batch normalization: its moving statistics are per replica in Keras 3 until synced.
# Weight averaging: the averaged weights are swapped in and out on every worker alike.
# Shifts from the second epoch (index 1), decided in the input pipeline by (seed, epoch).
TWO_WORKERS = TINY_CNN + ["--epochs", "2", "--batch-size", "32", "--deterministic"]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, env) -> tuple[Path, str, str]:
    """An uninterrupted two-worker run: its folder, the chief's and the other worker's output."""
    # No --strategy: auto must pick multi_worker because TF_CONFIG names two workers.
    base = tmp_path_factory.mktemp("two-workers")
    chief, other = (w.finish() for w in start_workers(base, TWO_WORKERS, env))
    return base, chief, other


@pytest.mark.slow
def test_two_workers_train_identically_and_only_the_chief_exports(two_workers):
    tmp_path, chief, other = two_workers
    assert "Strategy multi_worker (2 workers, 2 replicas in all; this is worker 0 (chief))" in chief
    digests = [DIGEST.search(out).group(1) for out in (chief, other)]
    assert digests[0] == digests[1], "the workers ended with different weights"
    assert "the chief evaluates and exports" in other

    assert exported_versions(tmp_path / "worker0") == ["1"]
    meta = exported_metadata(tmp_path / "worker0")
    assert meta["distribution"]["weights_sha256"] == digests[0]
    # A TFDS dataset: every worker reads it whole and keeps its share of each global batch.
    assert meta["distribution"]["input"]["sharding"] == "data" and "Input: every worker reads" in other
    assert (meta["distribution"]["strategy"], meta["distribution"]["workers"],
            meta["distribution"]["global_batch_size"]) == ("multi_worker", 2, 64)
    assert meta["export"]["verified_test_accuracy"] == meta["metrics"]["test"]["accuracy"] > 0.8
    assert meta["training"]["epochs_run"] == 2
    # 47 global batches per epoch: the loop's calls of several steps (10, 10, 10, 10, 7) add up.
    assert meta["training"]["steps_per_epoch"] == -(-3000 // 64) == 47
    assert meta["training"]["steps_run"] == 2 * 47
    assert meta["model"]["hyperparameters"]["ema_momentum"] > 0
    logdir = tmp_path / "worker0" / meta["run"]["logdir"]
    assert (logdir / "train").is_dir() and (logdir / "validation").is_dir()
    # The other worker wrote into a temporary folder only, and removed it.
    assert sorted(p.name for p in (tmp_path / "worker1").iterdir()) == []
    assert list((tmp_path / "tmp1").iterdir()) == []
    # Training finished, so no backup is left to resume from.
    assert not list((tmp_path / "worker0" / "work").glob("mnist/*/*/train-*"))


# --- SIGKILL and resume ------------------------------------------------------------------------

def check_resumed(output: str, epochs: int) -> int:
    match = RESUMED.search(output)
    assert match, output[-3000:]
    start = int(match.group(1))
    assert int(match.group(2)) == epochs and 3 <= start <= epochs, match.group(0)
    # Only the epochs left ran after the restart.
    assert f"Epoch {start - 1}/{epochs}" not in output and f"Epoch {epochs}/{epochs}" in output
    return start


@pytest.mark.slow
def test_a_mirrored_run_killed_and_rerun_resumes(tmp_path, env):
    """With two replicas on one machine (test_resume.py kills the default strategy's runs)."""
    args = TINY + ["--epochs", "5", "--batch-size", "16", "--strategy", "mirrored", "--cpu-devices", "2"]
    first = Process(args, tmp_path, env)
    first.wait_for(r"^Epoch 3/5")  # epoch 2 ended, so its backup is written
    first.kill()
    assert exported_versions(tmp_path) == [] and (list((tmp_path / "work").glob("mnist/*/*/train-*")))

    second = Process(args, tmp_path, env)
    output = second.finish()
    check_resumed(output, 5)
    assert "Resuming interrupted run" in output
    assert exported_versions(tmp_path) == ["1"]  # no half-written or temporary version
    meta = exported_metadata(tmp_path)
    assert meta["training"]["epochs_run"] == 5 and meta["training"]["resumed"] is True
    # The optimizer's step count (the learning-rate schedule's position) resumed too.
    assert meta["training"]["steps_run"] == 5 * meta["training"]["steps_per_epoch"]
    assert not list((tmp_path / "work").glob("mnist/*/*/train-*"))


@pytest.mark.slow
def test_two_workers_killed_mid_epoch_resume_to_the_uninterrupted_weights(two_workers, tmp_path, env):
    """Issue 27's exact resume on two workers: killed in the middle of the epoch whose shifts
    begin, rerun, they end with the weights of the uninterrupted run (`two_workers`)."""
    workers = start_workers(tmp_path, TWO_WORKERS, env)
    workers[0].wait_for(r"^Epoch 2/2")  # epoch 1 is checkpointed, epoch 2 is training
    workers[0].kill()  # the chief goes first; the other worker is then killed too (a preempted job)
    workers[1].kill()
    assert exported_versions(tmp_path / "worker0") == []
    assert list((tmp_path / "worker0" / "work").glob("mnist/*/*/train-*/checkpoint"))

    # The same command again (on fresh ports, as a rescheduled job would get).
    outputs = [w.finish() for w in start_workers(tmp_path, TWO_WORKERS, env)]
    assert all("Resuming training from epoch 2/2" in out for out in outputs), outputs[0][-3000:]
    assert "Epoch 1/2" not in outputs[0]  # only the epoch left ran after the restart
    digests = {DIGEST.search(out).group(1) for out in outputs}
    assert digests == {DIGEST.search(two_workers[1]).group(1)}, "not the uninterrupted run's weights"
    assert exported_versions(tmp_path / "worker0") == ["1"]
    assert exported_versions(tmp_path / "worker1") == []
    meta = exported_metadata(tmp_path / "worker0")
    assert meta["training"]["epochs_run"] == 2 and meta["distribution"]["weights_sha256"] in digests
    # The optimizer's step count (the learning-rate schedule's position) resumed too.
    assert meta["training"]["steps_run"] == 2 * meta["training"]["steps_per_epoch"] == 2 * 47


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["table", "text"])
def test_two_workers_read_their_own_shares_of_a_table_or_corpus(tmp_path, env, kind):
    """A table (in memory or not), or text over --cache-budget: the loader reads each worker's share."""
    from test_table import mixed_rows, write
    from test_text import documents, write_table

    if kind == "table":
        table = write(tmp_path / "rows.csv", *mixed_rows(401))
        flags = ("--label-column", "label")
    else:
        table = write_table(tmp_path / "rows.csv", documents(60))
        flags = ("--label-column", "topic", "--cache-budget", "1K")
    args = ("--dataset", str(table), *flags, "--no-tune", "--epochs", "2", "--histogram-freq", "0", "--deterministic")
    chief, other = (w.finish() for w in start_workers(tmp_path, args, env, module=f"pipelines.{kind}"))
    digests = [DIGEST.search(out).group(1) for out in (chief, other)]
    assert digests[0] == digests[1], "the workers ended with different weights"
    shares = [re.search(r"Input: worker (\d) of 2 trains on its own ([\d,]+) of the ([\d,]+) training", out)
              for out in (chief, other)]
    assert [m.group(1) for m in shares] == ["0", "1"], chief[-3000:]
    sizes = [int(m.group(2).replace(",", "")) for m in shares]
    assert sum(sizes) == int(shares[0].group(3).replace(",", "")) and abs(sizes[0] - sizes[1]) <= 1
    meta = json.loads((tmp_path / "worker0" / "exported" / "rows" / "1" / "metadata.json").read_text())
    assert meta["distribution"]["input"]["sharding"] == "rows" and meta["distribution"]["workers"] == 2
    assert meta["dataset"]["source"]["shard"]["worker"] == 0
