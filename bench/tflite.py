"""Float SavedModel vs its int8 TFLite model under LiteRT, on this CPU.

    python -m bench.tflite [--version-dir exported/mnist/N] [--latency-calls 300] [--batches 20]

The version must have been exported with --export-tflite (it holds model_int8.tflite).
Measures, for each of the two:
  * size: the SavedModel's variables/ (and the whole folder) vs the .tflite file;
  * single-image latency, p50 and p99 over --latency-calls calls of one test image each
    (after warm-up), through the SavedModel's `serving_default` signature and through the
    LiteRT signature runner;
  * throughput at batches of 256 test images: images per second over --batches batches;
  * accuracy on the whole MNIST test split (from the published files), and the drop.
Both run in this one process, one after the other; LiteRT gets as many threads as TensorFlow
uses by default (the cores). Prints a Markdown table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import numpy as np

from bench import results
from tfpipeline import start_tensorflow_quietly

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
BATCH = 256


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def latest_version(base: Path) -> Path:
    versions = sorted((int(p.name), p) for p in base.iterdir()
                      if p.name.isdigit() and (p / "model_int8.tflite").exists())
    if not versions:
        raise SystemExit(f"No version under {base} has model_int8.tflite; run python -m pipelines.mnist "
                         "--export-tflite first, or pass --version-dir.")
    return versions[-1][1]


def timed(fn, calls: int) -> np.ndarray:
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return np.asarray(seconds)


def measure(name: str, predict, images: np.ndarray, labels: np.ndarray, calls: int, batches: int) -> dict:
    """`predict(batch) -> classes`; the same protocol for both models."""
    one = images[:1]
    for _ in range(20):
        predict(one)  # warm-up: first calls trace, allocate and resize
    latency = timed(lambda: predict(one), calls)
    batch = images[:BATCH]
    predict(batch)
    throughput = timed(lambda: predict(batch), batches)
    classes = np.concatenate([predict(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])
    return {
        "model": name,
        "latency_p50_ms": round(float(np.percentile(latency, 50)) * 1e3, 3),
        "latency_p99_ms": round(float(np.percentile(latency, 99)) * 1e3, 3),
        "batch256_images_per_s": round(BATCH / float(np.median(throughput))),
        "test_accuracy": float((classes.reshape(-1) == labels).mean()),
    }


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tflite", description=__doc__.split("\n\n")[0])
    p.add_argument("--version-dir", type=Path, help="a published version with model_int8.tflite "
                   "(default: the highest such under exported/mnist)")
    p.add_argument("--latency-calls", type=int, default=300)
    p.add_argument("--batches", type=int, default=20, help="timed batches of 256 (median taken)")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images (a quick check)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/)")
    args = p.parse_args(argv)
    start_tensorflow_quietly()  # before anything here imports TensorFlow
    import tensorflow as tf

    from tfpipeline.export import tflite as quantize

    version = args.version_dir or latest_version(ROOT / "exported" / "mnist")
    images = read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[..., np.newaxis][: args.limit]
    labels = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz").astype(np.int64)[: args.limit]

    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    float_row = measure("float32 SavedModel (TensorFlow)",
                        lambda x: serve(images=tf.constant(x))["classes"].numpy(), images, labels,
                        args.latency_calls, args.batches)
    lite = quantize.LiteRTModel(version / quantize.FILENAME, num_threads=os.cpu_count())
    int8_row = measure("int8 TFLite (LiteRT)", lambda x: lite.predict({"images": x}, batch_size=BATCH)["classes"],
                       images, labels, args.latency_calls, args.batches)
    float_row.update(bytes=quantize.variables_bytes(version), what="variables/")
    float_row["folder_bytes"] = folder_bytes(version) - (version / quantize.FILENAME).stat().st_size
    int8_row.update(bytes=(version / quantize.FILENAME).stat().st_size, what="model_int8.tflite")
    drop = round((float_row["test_accuracy"] - int8_row["test_accuracy"]) * 100, 3)
    result = {"version": str(version), "test_images": len(labels), "threads": os.cpu_count(),
              "accuracy_drop_points": drop,
              "size_ratio_variables_over_tflite": round(float_row["bytes"] / int8_row["bytes"], 2),
              "rows": [float_row, int8_row]}

    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\n{version}, {len(labels):,} test images, {os.cpu_count()} threads, {date}\n")
    print("| model | size | latency p50 (1 image) | p99 | throughput (batch 256) | test accuracy |")
    print("|---|---|---|---|---|---|")
    for row in (float_row, int8_row):
        print(f"| {row['model']} | {row['bytes'] / 1e3:,.0f} kB ({row['what']}) | {row['latency_p50_ms']:.2f} ms | "
              f"{row['latency_p99_ms']:.2f} ms | {row['batch256_images_per_s']:,} images/s | "
              f"{row['test_accuracy']:.2%} |")
    print(f"\nint8 vs float: {result['size_ratio_variables_over_tflite']}x smaller than the variables, "
          f"accuracy drop {drop:+.2f} points.")
    out = results.write("tflite", result, argv, out=args.out)
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
