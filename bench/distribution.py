"""What the distribution machinery costs: training images/s on one device, mirrored over two
logical CPU devices, and two workers on 127.0.0.1, all at the same global batch.

    python -m bench.distribution                 # all rows, 2 rounds: about 12 minutes on 2 cores
    python -m bench.distribution --only "mirrored (,multi_worker (" --rounds 3 --examples 20480
                                                 # the main rows: about 5 minutes

Each configuration runs in fresh processes (the strategy must be set up before TensorFlow
initializes its devices) and trains the default CNN on the MNIST training split with the
pipeline's own code: `distribute.setup`, `data.make_pipeline`, `training.fit` (or
`multiworker.fit` for two workers). Validation, TensorBoard and checkpoints are off, so the
clock sees training steps only; the first epoch (tracing, filling the data cache) is not
timed, and images/s comes from the median step time, which a burst of load from elsewhere
on the machine moves far less than a total would. On one machine, replicas share its cores:
more replicas cannot be faster here, so the figure of merit is the overhead,
1 - (images/s distributed) / (images/s on one device), each round against its own default run.
Two overheads are reported. "overhead" compares with one device at the same global batch; it
includes that each replica computes a smaller batch, which on a CPU is less efficient per
image by itself. "machinery" compares with one device at the per-replica batch (a row that
always runs), so it is what the strategy, the all-reduces and our multi-worker loop cost.
Each of the two workers gets one intra-op thread (one core each, as if on its own small
machine) instead of two threads each fighting over the same two cores.

Each run also reports the CPU seconds it used per 1,000 training images (all its processes
together, timed epochs only). On a machine shared with other work, where images/s moves
with the neighbours, that figure barely moves, and it separates work the machinery adds
(more CPU per image) from cores left idle (same CPU per image, fewer images/s).

Reference rows separate the causes: one device at the per-replica batch (is a smaller
batch less efficient?), with one thread, and with the BFC allocator that the distributed
paths use; and the distributed paths with malloc, as they were before
(`TF_CPU_ALLOCATOR_USE_BFC=false`; see `distribute.use_bfc_cpu_allocator`).

Writes bench/results/distribution-<time>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tfpipeline import start_tensorflow_quietly

start_tensorflow_quietly()  # TensorFlow loads here, without its C++ start-up noise

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import results  # noqa: E402
from tfpipeline import data, distribute, models, training  # noqa: E402
from tfpipeline.distribute import multiworker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def child(args) -> None:
    """One training process: print `RESULT {json}` with its measured images/s."""
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    dist = distribute.setup(args.strategy, cpu_devices=args.cpu_devices)
    keras.utils.set_random_seed(0)
    per_replica = args.global_batch // dist.replicas
    datasets = data.load("mnist", validation_fraction=0.1)
    train = datasets.train.take(args.examples)
    hp = models.hyperparams("cnn", {"batch_size": per_replica})
    # Augmentation on from the first batch, so the throughput includes its cost.
    augmentation = dataclasses.replace(models.augmentation("cnn", hp, 0), start_epoch=0)
    train_ds = data.make_pipeline(train, batch_size=args.global_batch, training=True, seed=0, first_epoch=0,
                                  end_epoch=args.epochs, per_batch=augmentation.per_batch(0))
    # The settings a real run derives (as pipeline.run does: global batch, scaled rate, and the
    # family's own warmup and weight averaging), for the bench's epochs and images.
    global_hp = dataclasses.replace(hp, epochs=args.epochs, batch_size=args.global_batch,
                                    learning_rate=dist.learning_rate(hp.learning_rate))
    settings = training.settings_for(global_hp, args.examples, early_stopping_patience=0, verbose=2,
                                     steps_per_execution=args.steps_per_execution)
    with dist.strategy.scope():
        model = models.build("cnn", datasets.spec.input_shape, datasets.spec.num_classes, hp)
        training.compile_model(model, settings)
    clock = EpochClock()
    fit = multiworker.fit if dist.kind == "multi_worker" else training.fit
    fit(model, train_ds, None, settings, extra_callbacks=[clock])
    timed = clock.seconds[1:]  # the first epoch traces the step function and fills the cache
    steps = [d for epoch in clock.steps[1:] for d in epoch[1:-1]]  # not an epoch's first call, nor its last
    steps = steps or [d for epoch in clock.steps[1:] for d in epoch]  # epochs too short for that
    cpu_seconds = sum(clock.cpu_seconds[1:])
    print("RESULT " + json.dumps({
        "strategy": dist.kind, "replicas": dist.replicas, "workers": dist.workers,
        "global_batch": args.global_batch, "per_replica_batch": per_replica,
        "epoch_seconds": [round(s, 3) for s in clock.seconds],
        "images_per_second_mean": args.examples * len(timed) / sum(timed),
        "median_step_seconds": statistics.median(steps),
        "images_per_second": args.global_batch / statistics.median(steps),
        "cpu_seconds_per_1000_images": 1000 * cpu_seconds / (args.examples * len(timed)),
    }), flush=True)


class EpochClock(keras.callbacks.Callback):
    """Each epoch's training seconds, and the time of each of its steps: from one batch's end
    to the next one's, so it covers everything a step costs (input included), whichever loop
    runs it. Validation is not included. A loop that runs several steps per call reports
    only the call's last batch; each step of it is then counted at the call's mean."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []  # this process's user + system time
        self.steps: list[list[float]] = []  # per callback: seconds per step

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._last = time.perf_counter()
        self._last_batch = -1
        self._cpu = sum(os.times()[:2])
        self.steps.append([])

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.steps[-1].append((now - self._last) / (batch - self._last_batch))
        self._last, self._last_batch = now, batch

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(self._last - self._start)
        self.cpu_seconds.append(sum(os.times()[:2]) - self._cpu)


def measure(name: str, strategy: str, args, *, workers: int = 1, cpu_devices: int | None = None,
            threads: int | None = None, batch: int | None = None, environ: dict | None = None,
            steps_per_execution: int | None = None) -> dict:
    command = [sys.executable, "-m", "bench.distribution", "--child", "--strategy", strategy,
               "--global-batch", str(batch or args.global_batch), "--epochs", str(args.epochs),
               "--examples", str(args.examples)]
    if cpu_devices:
        command += ["--cpu-devices", str(cpu_devices)]
    if threads:
        command += ["--threads", str(threads)]
    if steps_per_execution:
        command += ["--steps-per-execution", str(steps_per_execution)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **(environ or {})}
    tf_configs = distribute.local_tf_configs(distribute.free_ports(workers)) if workers > 1 else []
    print(f"{name}: running ({' '.join(command[1:])}) ...", flush=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    procs = []
    for index in range(workers):
        if tf_configs:
            env = {**env, "TF_CONFIG": tf_configs[index]}
        procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs):
        if p.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out[-3000:]}")
    results = [json.loads(line[len("RESULT "):]) for out in outputs for line in out.splitlines()
               if line.startswith("RESULT ")]
    result = results[0]  # every worker trains the same global batches in lockstep
    result.update(name=name, wall_seconds=round(time.perf_counter() - started, 1),
                  load_before=load_before, load_after=os.getloadavg()[0], threads_per_process=threads,
                  environment=environ or {},
                  # every worker's CPU, per image of the global batch
                  cpu_seconds_per_1000_images=sum(r["cpu_seconds_per_1000_images"] for r in results))
    print(f"    {result['images_per_second']:,.0f} images/s from the median step "
          f"({result['images_per_second_mean']:,.0f} from whole epochs {result['epoch_seconds']} s), "
          f"{result['cpu_seconds_per_1000_images']:.2f} CPU s per 1,000 images, "
          f"load {load_before:.1f} -> {result['load_after']:.1f}", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.distribution", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--global-batch", type=int, default=256,
                        help="images per step, all replicas together (default 256)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not timed (default 3)")
    parser.add_argument("--examples", type=int, default=10240,
                        help="training images per epoch (default 10240: 40 steps)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of all the configurations, interleaved (default 2)")
    parser.add_argument("--only", help="run only the configurations whose name contains one of these "
                        "comma-separated words (e.g. 'default (,mirrored (,multi_worker (': the three main rows)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    parser.add_argument("--cpu-devices", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps-per-execution", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not timed")

    malloc = {distribute.ENV_CPU_BFC: "false"}
    batch_reference = f"default, batch {args.global_batch // 2} (reference)"
    configurations = [
        ("default (1 device)", "default", {}),
        ("mirrored (2 CPU devices)", "mirrored", {"cpu_devices": 2}),
        ("multi_worker (2 workers, 127.0.0.1)", "multi_worker", {"workers": 2, "threads": 1}),
        # The distributed paths as they were before they kept their CPU memory.
        ("mirrored, malloc (before)", "mirrored", {"cpu_devices": 2, "environ": malloc}),
        ("multi_worker, malloc (before)", "multi_worker", {"workers": 2, "threads": 1, "environ": malloc}),
        # One device at the replicas' batch: a smaller batch is less efficient by itself, and
        # the machinery's own cost is what the distributed rows lose against this row.
        (batch_reference, "default", {"batch": args.global_batch // 2}),
        # How much of the two workers' figure is only their thread setting, not distribution.
        ("default, 1 intra-op thread (reference)", "default", {"threads": 1}),
        # Two workers as a plain command on one machine runs them: TF's thread defaults each.
        ("multi_worker, default threads (reference)", "multi_worker", {"workers": 2}),
        # Does one device gain as much as the two workers from several steps per call?
        (f"default, {multiworker.STEPS_PER_CALL} steps per call (reference)", "default",
         {"steps_per_execution": multiworker.STEPS_PER_CALL}),
        # What the allocator alone gives one device.
        ("default, BFC allocator (reference)", "default", {"environ": {distribute.ENV_CPU_BFC: "true"}}),
    ]
    if args.only:
        # The one-device rows at the global and at the per-replica batch always run: every
        # round's overheads are measured against them.
        words = args.only.split(",")
        configurations = [c for c in configurations if c[0] in (configurations[0][0], batch_reference)
                          or any(w in c[0] for w in words)]
    # Interleaved rounds, and each round compared with its own default run: this machine's
    # speed drifts with its neighbours' load, and a paired comparison cancels most of that.
    rounds = []
    for r in range(args.rounds):
        print(f"round {r + 1} of {args.rounds}", flush=True)
        runs = [measure(name, strategy, args, **options) for name, strategy, options in configurations]
        # One device, by batch size, as it runs by default (no thread or allocator setting).
        one_device = {run["global_batch"]: run for run in runs
                      if run["strategy"] == "default" and not run["threads_per_process"] and not run["environment"]}
        for run in runs:
            run["overhead"] = 1 - run["images_per_second"] / runs[0]["images_per_second"]
            # The distribution machinery alone: against one device doing a replica's batch.
            same_batch = one_device.get(run["per_replica_batch"])
            run["machinery_overhead"] = (1 - run["images_per_second"] / same_batch["images_per_second"]
                                         if run["replicas"] > 1 and same_batch else None)
        rounds.append(runs)
    summary = []
    for i, (name, _, _) in enumerate(configurations):
        runs = [rounds[r][i] for r in range(args.rounds)]
        summary.append({
            "name": name, "replicas": runs[0]["replicas"], "per_replica_batch": runs[0]["per_replica_batch"],
            "images_per_second": statistics.median(run["images_per_second"] for run in runs),
            "overhead": statistics.median(run["overhead"] for run in runs),
            "overhead_by_round": [round(run["overhead"], 4) for run in runs],
            "machinery_overhead": (statistics.median(run["machinery_overhead"] for run in runs)
                                   if runs[0]["machinery_overhead"] is not None else None),
            "cpu_seconds_per_1000_images": statistics.median(run["cpu_seconds_per_1000_images"] for run in runs),
            "load": [round(run["load_before"], 1) for run in runs],
        })
    header = (f"{'configuration':40} {'replicas':>8} {'per-replica batch':>17} {'images/s':>9} {'overhead':>9}"
              f" {'machinery':>9} {'CPU s/1k img':>12}   overhead by round (load)")
    print(f"\nGlobal batch {args.global_batch}, default CNN, MNIST, {os.cpu_count()} cores; images/s from the "
          f"median step time over {args.epochs - 1} timed epoch(s) of {args.examples:,} images; median of "
          f"{args.rounds} round(s); niceness {os.nice(0)}, load average (1 min) before each run in brackets.\n"
          f"overhead: images/s lost against one device at the same global batch; machinery: against one "
          f"device at the per-replica batch ({batch_reference!r}), i.e. without the cost of smaller batches")
    print(header)
    print("-" * len(header))
    for row in summary:
        print(f"{row['name']:40} {row['replicas']:>8} {row['per_replica_batch']:>17} "
              f"{row['images_per_second']:>9,.0f} {row['overhead']:>9.1%} "
              f"{'' if row['machinery_overhead'] is None else format(row['machinery_overhead'], '.1%'):>9} "
              f"{row['cpu_seconds_per_1000_images']:>12.2f}   "
              + ", ".join(f"{o:.1%} ({load})" for o, load in zip(row["overhead_by_round"], row["load"])))
    path = results.write("distribution", {"global_batch": args.global_batch, "epochs": args.epochs,
                                          "examples": args.examples,
                                          "cnn": dataclasses.asdict(models.hyperparams("cnn", {})),
                                          "nice": os.nice(0), "summary": summary, "rounds": rounds}, argv)
    print(f"\nwrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
