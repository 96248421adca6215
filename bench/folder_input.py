"""Folder datasets: is training ever input-bound, and does memory stay flat past the cache budget?

    python -m bench.folder_input ratio DIR [--image-size 32x32] [--repeats 3]
    python -m bench.folder_input rss WORKDIR [--budget 24M] [--image-size 32x32] [--epochs 1]

`ratio`: images/s the input pipeline delivers from the folder's JPEG/PNG files with no cache
(every image read, decoded and resized, as an epoch over data that fits nowhere does),
against images/s the default CNN's training consumes at that input size, same run (issue 14's
goal: at least 5x). Also the rates from the memory cache and from the disk cache (what the
epochs after the first read, when the data fits the budget or not).

`rss`: writes (with bench.image_folders) one folder whose decoded size fits --budget and one
3x the budget, then runs `python -m pipelines.images --no-tune` on each in a subprocess with
`--cache-budget BUDGET`, and reports each run's peak RSS (the kernel's ru_maxrss, from
os.wait4); a third run gives the large folder a budget it fits in, to show what the memory
cache would have cost. Goal: the over-budget run's peak within 10% of the fitting run's.

Timings move with the machine's load; compare figures from one invocation. Prints a table and
the JSON it wrote under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import results
from tfpipeline import start_tensorflow_quietly

ROOT = Path(__file__).resolve().parents[1]


def input_rate(ds, batch_size: int, cache, repeats: int) -> float:
    """Median images/s over `repeats` passes of the training pipeline (after one warm pass)."""
    from tfpipeline import data

    pipe = data.make_pipeline(ds, batch_size=batch_size, training=True, seed=0, cache=cache)
    for _ in pipe:  # warm: file system cache, tracing, (the cache itself when cache=True)
        pass
    rates = []
    for _ in range(repeats):
        start, n = time.perf_counter(), 0
        for images, _ in pipe:
            n += int(images.shape[0])
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def ratio(args) -> dict:
    from bench.speed import family_rate
    from tfpipeline import data, models

    datasets = data.load(str(args.dir), image_size=args.image_size, work_dir=str(args.work_dir))
    batch = models.hyperparams("cnn").batch_size
    uncached = input_rate(datasets.train, batch, False, args.repeats)
    cached = input_rate(datasets.train, batch, True, args.repeats)
    disk_file = args.work_dir / "bench-disk-cache" / f"train-{os.getpid()}"
    on_disk = input_rate(datasets.train, batch, str(disk_file), args.repeats)
    train = family_rate("cnn", datasets, args.repeats)
    return {
        "dataset": str(args.dir), "input_shape": list(datasets.spec.input_shape),
        "train_images": datasets.spec.num_examples["train"],
        "input_images_per_s_uncached": round(uncached), "input_images_per_s_cached": round(cached),
        "input_images_per_s_disk_cache": round(on_disk), "ratio_disk_cache": None,
        "cnn_training_images_per_s": round(train), "ratio_uncached": round(uncached / train, 2),
        "ratio_cached": round(cached / train, 2),
    } | {"ratio_disk_cache": round(on_disk / train, 2)}


def run_pipeline(dataset: Path, budget: int, image_size: str, epochs: int, cwd: Path) -> dict:
    """`pipelines.images` in a subprocess; its peak RSS from the kernel."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pipelines.images", "--dataset", str(dataset), "--no-tune",
               "--epochs", str(epochs), "--image-size", "x".join(map(str, image_size)), "--cache-budget", str(budget),
               "--histogram-freq", "0"]
    with open(cwd / "log.txt", "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed; see {cwd / 'log.txt'}")
    metadata = json.loads(next((cwd / "exported").glob("*/1/metadata.json")).read_text())
    cache = metadata["dataset"]["source"]["cache"]
    return {"dataset": dataset.name, "train_images": metadata["dataset"]["num_examples"]["train"],
            "prepared_mib": round(cache["prepared_bytes"] / 2**20, 1), "budget_mib": round(budget / 2**20, 1),
            "cache": cache["kind"], "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is KiB here
            "seconds": round(seconds, 1), "test_accuracy": metadata["metrics"]["test"]["accuracy"]}


def rss(args) -> dict:
    from bench.image_folders import read_mnist, write_folder
    height, width = args.image_size
    example = height * width * 3 + 4
    fits = int(args.budget * 0.9 // example)  # all splits together, decoded
    large = int(args.budget * 3 // example)
    manual = Path(args.manual_dir or os.environ.get("TFPIPELINE_MANUAL_DIR", ""))
    images, labels = read_mnist(manual, large)
    work = args.workdir
    folders = {}
    for name, count in (("fits", fits), ("large", large)):
        folder = work / f"{name}-{count}"
        if not folder.exists():
            write_folder(folder, images[:count], labels[:count], layout="split")
        folders[name] = folder
    runs = {
        "fits_budget": run_pipeline(folders["fits"], args.budget, args.image_size, args.epochs, work / "run-fits"),
        "3x_budget": run_pipeline(folders["large"], args.budget, args.image_size, args.epochs, work / "run-large"),
        "3x_in_memory": run_pipeline(folders["large"], 4 * args.budget, args.image_size, args.epochs,
                                     work / "run-large-memory"),
    }
    base = runs["fits_budget"]["peak_rss_mib"]
    return {"runs": runs, "over_budget_vs_fits": round(runs["3x_budget"]["peak_rss_mib"] / base, 3),
            "in_memory_vs_fits": round(runs["3x_in_memory"]["peak_rss_mib"] / base, 3)}


def main(argv: list[str] | None = None) -> int:
    from tfpipeline.argtypes import byte_size, image_size

    parser = argparse.ArgumentParser(prog="python -m bench.folder_input", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("ratio", help="input pipeline images/s vs training images/s")
    r.add_argument("dir", type=Path, help="a folder dataset (e.g. written by bench.image_folders)")
    r.add_argument("--image-size", type=image_size, default=(32, 32))
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--work-dir", type=Path, default=Path("work"))
    m = sub.add_parser("rss", help="peak RSS on a dataset 3x the cache budget vs one that fits")
    m.add_argument("workdir", type=Path, help="where the generated folders and runs go")
    m.add_argument("--budget", type=byte_size, default=byte_size("24M"))
    m.add_argument("--image-size", type=image_size, default=(32, 32))
    m.add_argument("--epochs", type=int, default=1)
    m.add_argument("--manual-dir", help="folder of the MNIST files (default: $TFPIPELINE_MANUAL_DIR)")
    args = parser.parse_args(argv)
    start_tensorflow_quietly()  # before anything here imports TensorFlow
    result = ratio(args) if args.command == "ratio" else rss(args)
    print(json.dumps(result, indent=2))
    print(results.write(f"folder_input-{args.command}", result, argv, command="python -m bench.folder_input"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
