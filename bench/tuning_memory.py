"""Resident memory across the trials of a search (tiny models): does it stay flat?

    python -m bench.tuning_memory [--trials 12] [--tuner random] [--baseline]

KerasTuner searches are known to grow in memory trial after trial (keras-tuner issues #395,
#873). This runs a real search through `tfpipeline.tuning` (its tuner, oracle, hypermodel,
per-trial TensorBoard and HParams logging) over a tiny MLP on synthetic 28x28 images, and
reads the process's resident memory (VmRSS) after every trial. The figure that matters is
the growth from trial 3 (once every code path has been traced) to trial 10.

What growth remains is TensorFlow's, not the search's: a plain loop of build, compile,
`model.fit`, `del`, `keras.backend.clear_session()`, `gc.collect()` grows by the same few MB
per model here (keras-team/keras issues #17458, #20552). It grows with the size of each
model's graph, so the architecture is pinned (one 16-unit layer) and only the learning
rate and dropout are searched: trials then compare like with like. `--baseline` measures
that plain loop (same model, data and training code, no KerasTuner) for comparison.

Prints one line per trial, then a JSON summary as the last line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tfpipeline import start_tensorflow_quietly

start_tensorflow_quietly()  # TensorFlow loads here, without its C++ start-up noise

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfpipeline import tuning  # noqa: E402
from tfpipeline.config import TUNERS, SearchSettings  # noqa: E402
from tfpipeline.data import DatasetSpec  # noqa: E402
from tfpipeline.inputs.image import ImageInput  # noqa: E402
from tfpipeline.pipeline import PipelineConfig  # noqa: E402


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def synthetic(n: int, seed: int) -> tf.data.Dataset:
    """Learnable 28x28 uint8 images: the label is which quadrant is bright."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=n).astype(np.int32)
    images = rng.integers(0, 60, size=(n, 28, 28, 1), dtype=np.uint8)
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 2)
        images[i, r * 14:(r + 1) * 14, c * 14:(c + 1) * 14] += 150
    return tf.data.Dataset.from_tensor_slices((images, labels))


def measure(trials: int, tuner_kind: str, workdir: Path) -> dict:
    spec = DatasetSpec(name="synthetic", version="0", input_shape=(28, 28, 1), input=ImageInput(28, 28, 1),
                       num_classes=4,
                       class_names=("0", "1", "2", "3"), splits={"train": "-", "validation": "-", "test": "-"},
                       num_examples={"train": 1024, "validation": 256, "test": 256})
    config = PipelineConfig(dataset="synthetic", model="mlp", quick=True, logdir=str(workdir / "runs"))
    data = tuning.TrialData(synthetic(1024, 0), synthetic(256, 1), seed=0)
    families = ("mlp",)
    pinned = {"units": 16, "layers": 1, "normalization": "none"}
    hypermodel = tuning.PipelineHyperModel(tuning.TrialSetup(
        config=config, families=families, fixed=pinned, spec=spec, data=data, num_search=1024, max_epochs=1,
        logdir=workdir / "runs" / "bench", run_id="bench", verbose=0))
    settings = SearchSettings(tuner=tuner_kind, max_trials=trials, max_epochs=1)
    tuner = tuning.make_tuner(settings.budget(quick=True, kind="image"), hypermodel, workdir / "work",
                              start_families=(None,), seed=0)
    tuner.oracle.verbose = 0
    rss: list[float] = []
    end_trial = tuner.on_trial_end

    def on_trial_end(trial):  # after the tuner's own end-of-trial cleanup
        end_trial(trial)
        rss.append(round(resident_mb(), 1))
        print(f"trial {len(rss):>3}  {trial.status:<10} resident {rss[-1]:8.1f} MB", flush=True)

    tuner.on_trial_end = on_trial_end
    tuner.search(epochs=1, verbose=0)
    return {"trials": len(rss), "tuner": tuner_kind, "rss_mb": rss}


def plain_loop(trials: int) -> dict:
    """The baseline: the same tiny model trained in a plain loop, freed the documented way."""
    import dataclasses
    import gc

    import keras

    from tfpipeline import data, models, training

    train = data.make_pipeline(synthetic(1024, 0), batch_size=256, training=True, seed=0)
    validation = data.make_pipeline(synthetic(256, 1), batch_size=256, training=False, seed=0)
    hp = models.hyperparams("mlp", {"units": 16, "layers": 1, "normalization": "none", "epochs": 1})
    rss: list[float] = []
    for _ in range(trials):
        keras.backend.clear_session()
        model = models.build("mlp", (28, 28, 1), 4, hp)
        training.compile_model(model, training.settings_for(dataclasses.replace(hp), 1024))
        model.fit(train, validation_data=validation, epochs=1, verbose=0)
        del model
        keras.backend.clear_session()
        gc.collect()
        rss.append(round(resident_mb(), 1))
        print(f"model {len(rss):>3}  resident {rss[-1]:8.1f} MB", flush=True)
    return {"trials": trials, "tuner": "none (plain keras loop)", "rss_mb": rss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tuning_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="number of trials (default 12; 10 or more)")
    parser.add_argument("--tuner", default="random", choices=TUNERS[1:], help="random (default) or bayesian")
    parser.add_argument("--baseline", action="store_true", help="a plain Keras loop instead of a search")
    args = parser.parse_args(argv)
    if args.baseline:
        summary = plain_loop(args.trials)
    else:
        with tempfile.TemporaryDirectory(prefix="tuning-memory-") as tmp:
            summary = measure(args.trials, args.tuner, Path(tmp))
    rss = summary["rss_mb"]
    if len(rss) >= 10:
        summary["growth_trial3_to_trial10"] = round(rss[9] / rss[2] - 1, 4)
        summary["mb_per_trial_3_to_10"] = round((rss[9] - rss[2]) / 7, 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
