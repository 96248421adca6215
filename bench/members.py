"""One long model or two short ones? The default CNN over several seeds, alone and in pairs.

    python -m bench.members [--epochs 8 15] [--seeds 5]

For each length in `--epochs`, trains the default CNN with seeds 11, 12, ... on the training
split (54,000 images), with the settings and input pipeline of `pipelines.mnist --no-tune
--epochs E` (the schedule for E epochs, the shifts fixed by seed, epoch and step). It scores each
model on the validation and test splits, then the probability average of every pair of models
of that length: what `--ensemble 2 --epochs E` exports, on 54,000 images instead of 60,000.
Prints each model, the mean of the models and the mean of the pairs; writes JSON to
bench/results/. docs/benchmarks.md (issue 28) has the figures that decided `--ensemble`'s
advice: two 8-epoch models train about as long as one 15-epoch model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import statistics
import time

from tfpipeline import start_tensorflow_quietly

start_tensorflow_quietly()  # TensorFlow loads here, without its C++ start-up noise

import keras  # noqa: E402
import numpy as np  # noqa: E402

from bench import results  # noqa: E402
from bench.speed import default_cnn  # noqa: E402
from tfpipeline import data, training  # noqa: E402
from tfpipeline.report import evaluation  # noqa: E402

FIRST_SEED = 11


def train_one(datasets, epochs: int, seed: int) -> tuple[keras.Model, float]:
    """The default CNN trained `epochs` on the training split with `seed`; returns it (its
    averaged weights, as a run exports them) and its training seconds."""
    model, _, settings, train = default_cnn(datasets, seed, epochs)
    start = time.perf_counter()
    training.fit(model, train, None, settings)
    return model, time.perf_counter() - start


def probabilities(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(images, batch_size=1000, verbose=0)))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probs.argmax(-1) == labels))


def compare(datasets, splits: dict, epochs: int, seeds: list[int]) -> dict:
    """Every seed's model of `epochs` alone, then every pair averaged, on each split."""
    singles, probs = [], []
    for seed in seeds:
        print(f"{epochs} epochs, seed {seed}:", flush=True)
        model, seconds = train_one(datasets, epochs, seed)
        probs.append({name: probabilities(model, images) for name, (images, _) in splits.items()})
        singles.append({"seed": seed, "train_seconds": round(seconds, 1),
                        **{name: accuracy(probs[-1][name], labels) for name, (_, labels) in splits.items()}})
        print("  " + ", ".join(f"{name} {singles[-1][name]:.2%}" for name in splits), flush=True)
    pairs = [{"seeds": [seeds[a], seeds[b]],
              **{name: accuracy((probs[a][name] + probs[b][name]) / 2, labels) for name, (_, labels) in splits.items()}}
             for a, b in itertools.combinations(range(len(seeds)), 2)]
    mean = {name: {"models": statistics.mean(s[name] for s in singles),
                   "pairs": statistics.mean(p[name] for p in pairs) if pairs else None} for name in splits}
    return {"epochs": epochs, "models": singles, "pairs": pairs, "mean": mean}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.members", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[8, 15], metavar="E",
                        help="model lengths to compare (default: 8 15)")
    parser.add_argument("--seeds", type=int, default=5, help=f"seeds {FIRST_SEED}, {FIRST_SEED + 1}, ... (default: 5)")
    args = parser.parse_args(argv)
    started = dt.datetime.now().isoformat(timespec="seconds")
    datasets = data.load("mnist").decode_into_memory()  # as pipelines.mnist does
    splits = {name: evaluation.collect(datasets.batched(getattr(datasets, name), batch_size=1000, seed=0,
                                                        training=False))
              for name in ("validation", "test")}
    seeds = list(range(FIRST_SEED, FIRST_SEED + args.seeds))
    runs = [compare(datasets, splits, epochs, seeds) for epochs in args.epochs]
    print()
    for run in runs:
        for name, mean in run["mean"].items():
            pairs = f", pairs {mean['pairs']:.2%}" if mean["pairs"] is not None else ""
            print(f"{run['epochs']} epochs, {name}: models {mean['models']:.2%}{pairs}")
    path = results.write("members", {"started": started, "runs": runs}, argv)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
