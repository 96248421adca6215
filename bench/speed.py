"""Speed suite: our default CNN against the plain-Keras reference, side by side, same run.

    python -m bench [--repeats 3] [--skip-reference] [--manual-dir DIR] [--data-dir DIR]

Reports, on this machine, in one invocation:
  * reference vs ours: training seconds to first reach 99.0% test accuracy (test accuracy
    evaluated at each epoch end with the clock stopped), final test accuracy, images/s;
  * arithmetic efficiency: our CNN's training FLOP/s (FLOPs per step counted from the step's
    graph, bench/flops.py, averaged over the epochs with and without the frozen first conv,
    times steps/s) against a large fp32 matmul's FLOP/s, timed right before and after it;
  * the tf.data input pipeline alone (images/s, no model) vs what our training consumes;
  * training images/s of each model family at its default settings.
Machines here are shared and noisy, so the goal figures are ratios from the same run, and
the cheap measurements are repeated (median). Prints a table; writes JSON to
bench/results/ and prints its path on the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import statistics
import time

from tfpipeline import start_tensorflow_quietly

start_tensorflow_quietly()  # TensorFlow loads here, without its C++ start-up noise

import keras  # noqa: E402

from bench import reference, results  # noqa: E402
from bench.flops import matmul_flops_per_second, train_step_flops  # noqa: E402
from bench.timing import TimeToAccuracy  # noqa: E402
from tfpipeline import data, models, training  # noqa: E402
from tfpipeline.report import evaluation  # noqa: E402
from tfpipeline.training import freezing  # noqa: E402


def default_cnn(datasets, seed: int, epochs: int | None = None):
    """Our default CNN, untrained, with what `pipelines.mnist --no-tune [--epochs E]` trains it
    with: its hyperparameters, the run's settings (no early stopping: nothing to validate on
    here) and the training stream of its input pipeline (shifts per batch, fixed by seed,
    epoch and step). Returns (model, hp, settings, train)."""
    keras.utils.set_random_seed(seed)
    hp = models.hyperparams("cnn", {"epochs": epochs} if epochs else None)
    settings = training.settings_for(hp, datasets.spec.num_examples["train"], verbose=0, early_stopping_patience=0)
    train = training_batches(datasets, "cnn", hp, seed)
    model = models.build("cnn", datasets.spec.input_shape, datasets.spec.num_classes, hp)
    return model, hp, settings, train


def training_batches(datasets, family: str, hp, seed: int, *, always_augmented: bool = False):
    """The endless training stream a run of `family` feeds its model, epoch by epoch over
    `hp.epochs` (`make_pipeline`'s, with the family's augmentation per batch). `always_augmented`:
    the augmentation on from the first batch, so throughput figures include its cost whichever
    epoch a run starts it at."""
    augmentation = models.augmentation(family, hp, seed)
    if always_augmented:
        augmentation = dataclasses.replace(augmentation, start_epoch=0)
    return datasets.batched(datasets.train, batch_size=hp.batch_size, seed=seed, training=True, first_epoch=0,
                            end_epoch=hp.epochs, per_batch=augmentation.per_batch(seed))


def fit_default_cnn(datasets, test_images, test_labels, seed: int = 0, extra_callbacks=()):
    """Train our default CNN as `pipelines.mnist --no-tune` does (`default_cnn`), scoring the
    test set after each epoch; returns (model, hp, timer)."""
    model, hp, settings, train = default_cnn(datasets, seed)
    timer = TimeToAccuracy(test_images, test_labels)
    # training.fit's callbacks, as in a real run: with weight averaging, the timer scores the
    # averaged weights that the run would export.
    training.fit(model, train, None, settings, extra_callbacks=[timer, *extra_callbacks])
    return model, hp, timer


def train_ours(datasets, test_images, test_labels, seed: int = 0) -> dict:
    """Our default CNN's figures for the table: time to 99%, accuracy, throughput, FLOPs."""
    model, hp, timer = fit_default_cnn(datasets, test_images, test_labels, seed)
    results = timer.results(images_per_epoch=datasets.spec.num_examples["train"])
    flops_per_image = run_flops_per_step(model, hp) / hp.batch_size
    return {
        **results,
        "train_flops_per_image": round(flops_per_image),
        "train_flops_per_second": round(flops_per_image * results["images_per_second"]),
        "hyperparameters": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(hp).items()},
    }


def run_flops_per_step(model, hp) -> float:
    """FLOPs of a training step averaged over the run's epochs: the first `frozen_stem_epochs`
    compute no gradients below the frozen layers, so their steps count fewer."""
    full = train_step_flops(model, hp.batch_size)
    frozen_epochs = min(hp.frozen_stem_epochs, hp.epochs) if hp.frozen_layers else 0
    if not frozen_epochs:
        return full
    with freezing.frozen(model, hp.frozen_layers):
        frozen = train_step_flops(model, hp.batch_size)
    return (frozen_epochs * frozen + (hp.epochs - frozen_epochs) * full) / hp.epochs


def input_pipeline_rate(datasets, hp, repeats: int) -> float:
    """Images/s the training pipeline (augmentation included) delivers with no model attached
    (after its cache fills)."""
    steps = -(-datasets.spec.num_examples["train"] // hp.batch_size)
    ds = training_batches(datasets, "cnn", hp, 0, always_augmented=True).take(steps)  # one epoch
    for _ in ds:  # a first pass fills the shuffle buffer (and the cache, if not in memory yet)
        pass
    rates = []
    for _ in range(repeats):
        start, n = time.perf_counter(), 0
        for images, _ in ds:
            n += int(images.shape[0])
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def family_rate(name: str, datasets, repeats: int, steps: int = 30) -> float:
    """Training images/s of a family's default model (median of `repeats` timed runs)."""
    keras.utils.set_random_seed(0)
    hp = models.hyperparams(name)
    settings = training.settings_for(hp, datasets.spec.num_examples["train"], verbose=0)
    model = models.build(name, datasets.spec.input_shape, datasets.spec.num_classes, hp)
    model = training.compile_model(model, settings)
    ds = training_batches(datasets, name, hp, 0, always_augmented=True)
    model.fit(ds, steps_per_epoch=5, epochs=1, verbose=0, shuffle=False)  # trace and warm up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
        rates.append(steps * hp.batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else round(a / b, 3)


# Issue 16's goals for this benchmark.
GOALS = {"seconds_to_99": 0.05, "final_test_accuracy": 0.995, "arithmetic_efficiency": 0.35}


def goal_lines(result: dict) -> list[str]:
    ratios, final = result["ratios"], result["ours"]["final_test_accuracy"]
    checks = [
        ("time to 99% / reference", ratios["seconds_to_99"], "<=", GOALS["seconds_to_99"], ".3f"),
        ("final test accuracy", final, ">=", GOALS["final_test_accuracy"], ".2%"),
        ("arithmetic efficiency", ratios["arithmetic_efficiency"], ">=", GOALS["arithmetic_efficiency"], ".2f"),
    ]
    lines = []
    for name, value, op, goal, spec in checks:
        met = value is not None and (value <= goal if op == "<=" else value >= goal)
        shown = "—" if value is None else format(value, spec)
        lines.append(f"goal {name} {op} {format(goal, spec)}: {shown} ({'met' if met else 'NOT met'})")
    return lines


def table(result: dict) -> str:
    ref, ours = result.get("reference") or {}, result["ours"]

    def fmt(value, spec):
        return "—" if value is None else format(value, spec)

    lines = [
        f"{'':32}{'reference':>14}{'ours':>14}{'ours/ref':>10}",
        f"{'seconds to 99.0% test accuracy':32}{fmt(ref.get('seconds_to_99'), '.1f'):>14}"
        f"{fmt(ours['seconds_to_99'], '.1f'):>14}"
        f"{fmt(result['ratios']['seconds_to_99'], '.3f'):>10}",
        f"{'final test accuracy':32}{fmt(ref.get('final_test_accuracy'), '.2%'):>14}"
        f"{fmt(ours['final_test_accuracy'], '.2%'):>14}",
        f"{'training images/s':32}{fmt(ref.get('images_per_second'), ',.0f'):>14}"
        f"{fmt(ours['images_per_second'], ',.0f'):>14}"
        f"{fmt(result['ratios']['images_per_second'], '.2f'):>10}",
        f"{'training seconds (all epochs)':32}{fmt(ref.get('train_seconds'), '.1f'):>14}"
        f"{fmt(ours['train_seconds'], '.1f'):>14}",
        "",
        f"arithmetic: ours trains at {ours['train_flops_per_second'] / 1e9:.1f} GFLOP/s "
        f"({ours['train_flops_per_image'] / 1e6:.2f} MFLOP per image) = "
        f"{result['ratios']['arithmetic_efficiency']:.2f} "
        f"of a large fp32 matmul's {result['machine']['matmul_flops'] / 1e9:.1f} GFLOP/s "
        f"(timed before and after our training: {result['machine']['matmul_flops_before'] / 1e9:.1f}, "
        f"{result['machine']['matmul_flops_after'] / 1e9:.1f})",
        f"input pipeline alone: {result['input_pipeline_images_per_second']:,.0f} images/s = "
        f"{result['ratios']['input_pipeline_over_training']:.1f}x what our training consumes",
        "family training images/s (default settings): "
        + ", ".join(f"{k} {v:,.0f}" for k, v in result["families_images_per_second"].items()),
        "",
        *goal_lines(result),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the cheap measurements (median)")
    parser.add_argument("--skip-reference", action="store_true", help="do not train the plain-Keras reference")
    parser.add_argument("--manual-dir", help="folder with the MNIST files (default: $TFPIPELINE_MANUAL_DIR)")
    parser.add_argument("--data-dir", help="TFDS data dir (default: $TFDS_DATA_DIR)")
    args = parser.parse_args(argv)

    started = time.time()
    # Decoded into memory before any clock starts, as `pipelines.mnist` does and as the
    # reference gets its NumPy arrays.
    datasets = data.load("mnist", data_dir=args.data_dir, manual_dir=args.manual_dir).decode_into_memory()
    test_images, test_labels = evaluation.collect(
        datasets.batched(datasets.test, batch_size=1000, seed=0, training=False))
    result: dict = {"machine": {}, "started": dt.datetime.now().isoformat(timespec="seconds")}

    if not args.skip_reference:
        print("plain-Keras reference (15 epochs):", flush=True)
        full_train = data.load("mnist", data_dir=args.data_dir, manual_dir=args.manual_dir, validation_fraction=0.1)
        x_train, y_train = reference.as_arrays(full_train.train.concatenate(full_train.validation))
        result["reference"] = reference.train(x_train, y_train, test_images, test_labels)
    print("ours (default CNN, default settings):", flush=True)
    # The matmul is timed right before and right after our training, and their mean is what
    # the efficiency divides by: this machine's speed drifts within minutes, so a timing taken
    # before the reference's minutes of training let the ratio drift with it (docs/benchmarks.md).
    before = matmul_flops_per_second()
    result["ours"] = train_ours(datasets, test_images, test_labels)
    after = matmul_flops_per_second()
    result["machine"].update(matmul_flops=round((before + after) / 2), matmul_flops_before=round(before),
                             matmul_flops_after=round(after))

    print("input pipeline and family throughput...", flush=True)
    result["input_pipeline_images_per_second"] = round(
        input_pipeline_rate(datasets, models.hyperparams("cnn"), args.repeats), 1
    )
    result["families_images_per_second"] = {
        name: round(family_rate(name, datasets, args.repeats), 1) for name in models.FAMILIES
    }
    ref = result.get("reference") or {}
    result["ratios"] = {
        "seconds_to_99": ratio(result["ours"]["seconds_to_99"], ref.get("seconds_to_99")),
        "images_per_second": ratio(result["ours"]["images_per_second"], ref.get("images_per_second")),
        "arithmetic_efficiency": ratio(result["ours"]["train_flops_per_second"], result["machine"]["matmul_flops"]),
        "input_pipeline_over_training": ratio(
            result["input_pipeline_images_per_second"], result["ours"]["images_per_second"]
        ),
    }
    result["wall_seconds"] = round(time.time() - started, 1)

    print()
    print(table(result))
    path = results.write("speed", result, argv, command="python -m bench")
    print(f"\nwall time {result['wall_seconds']:.0f} s; results: {path}")
    return 0
