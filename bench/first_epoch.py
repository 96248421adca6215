"""How robust is 99% after the first epoch? The default CNN's first epoch over several seeds.

    python -m bench.first_epoch [--seeds 5]

Each seed trains the model `pipelines.mnist` exports, with its real settings (the first
learning-rate cycle of the full run's schedule, the weight average, the input pipeline), for
its first epoch only, and scores the averaged weights on the 10,000 test images, as
`python -m bench` does for seed 0. Prints each seed's test accuracy and training seconds,
their mean and spread; writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics

from tfpipeline import start_tensorflow_quietly

start_tensorflow_quietly()  # TensorFlow loads here, without its C++ start-up noise

import keras  # noqa: E402

from bench import results  # noqa: E402
from bench.speed import fit_default_cnn  # noqa: E402
from tfpipeline import data  # noqa: E402
from tfpipeline.report import evaluation  # noqa: E402


class _StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def first_epoch(datasets, test_images, test_labels, seed: int) -> dict:
    _, _, timer = fit_default_cnn(datasets, test_images, test_labels, seed, extra_callbacks=[_StopAfterFirstEpoch()])
    return {"seed": seed, **timer.epochs[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_epoch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: 5)")
    args = parser.parse_args(argv)
    datasets = data.load("mnist").decode_into_memory()  # as pipelines.mnist and bench.speed do
    test_images, test_labels = evaluation.collect(
        datasets.batched(datasets.test, batch_size=1000, seed=0, training=False))
    runs = []
    for seed in range(args.seeds):
        print(f"seed {seed}:", flush=True)
        runs.append(first_epoch(datasets, test_images, test_labels, seed))
    accuracies = [r["test_accuracy"] for r in runs]
    result = {"started": dt.datetime.now().isoformat(timespec="seconds"), "runs": runs,
              "mean": statistics.mean(accuracies), "stdev": statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
              "min": min(accuracies), "max": max(accuracies),
              "seeds_at_or_above_99": sum(a >= 0.99 for a in accuracies)}
    print(f"\ntest accuracy after epoch 1 over {len(runs)} seeds: mean {result['mean']:.2%}, "
          f"stdev {result['stdev']:.2%}, min {result['min']:.2%}, max {result['max']:.2%}; "
          f"{result['seeds_at_or_above_99']} of {len(runs)} at 99% or more")
    path = results.write("first_epoch", result, argv)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
