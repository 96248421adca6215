"""Does the text input pipeline keep training fed? Documents/s read from the cache against
documents/s trained, for each text family's defaults, in one invocation.

    python -m bench.text_input ../shared/data/text/election-tweets-2016.tsv --label-column author

The goal (issue 24): the input pipeline delivers at least 5x the documents per second training
consumes. Both sides use the library's own pieces: `data.text.load`, the training stream of
`Datasets.batched` (shuffled per epoch, batched, prefetched: what `fit` reads), and each family's
default model compiled by `training.compile_model`. The input side is timed over one epoch of
the stream after a first pass filled its cache; the training side over one epoch of
`model.fit` on the same stream, after one warm-up epoch (tracing, the first pass). Prints a table
and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import results
from tfpipeline import start_tensorflow_quietly

ROOT = Path(__file__).resolve().parents[1]


def _stream(datasets, batch_size: int, epochs: int):
    return datasets.batched(datasets.train, batch_size=batch_size, seed=0, training=True, first_epoch=0,
                            end_epoch=epochs)


def measure(path: str, label_column: str | None, families: list[str]) -> dict:
    from tfpipeline import models, training
    from tfpipeline.data import text

    datasets = text.load(path, label_column=label_column, verbose=False)
    count = datasets.spec.num_examples["train"]
    result = {"dataset": path, "train_documents": count, "families": {}}
    for name in families:
        hp = models.hyperparams(name, {}, kind="text")
        steps = -(-count // hp.batch_size)
        stream = _stream(datasets, hp.batch_size, 3)
        iterator = iter(stream)
        for _ in range(steps):  # the first pass fills the cache
            next(iterator)
        start = time.perf_counter()
        for _ in range(steps):
            next(iterator)
        read = count / (time.perf_counter() - start)
        model = models.build(name, (), datasets.spec.num_classes, hp, input=datasets.spec.input)
        training.compile_model(model, training.settings_for(hp, count))
        model.fit(_stream(datasets, hp.batch_size, 2), steps_per_epoch=steps, epochs=1, verbose=0)  # warm-up
        start = time.perf_counter()
        model.fit(_stream(datasets, hp.batch_size, 2), steps_per_epoch=steps, epochs=1, verbose=0)
        trained = count / (time.perf_counter() - start)
        result["families"][name] = {"batch_size": hp.batch_size, "input_docs_per_s": read,
                                    "train_docs_per_s": trained, "ratio": read / trained}
        print(f"{name:12s} input {read:10,.0f} docs/s   training {trained:8,.0f} docs/s   "
              f"input / training {read / trained:6.1f}x", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="a text dataset (folder or CSV/TSV), as --dataset takes it")
    parser.add_argument("--label-column")
    parser.add_argument("--families", default="mlp,cnn,rnn,transformer")
    args = parser.parse_args(argv)
    start_tensorflow_quietly()  # before anything here imports TensorFlow
    result = measure(args.dataset, args.label_column, args.families.split(","))
    print(f"wrote {results.write('text_input', result, argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
