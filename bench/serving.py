"""Benchmark the REST server against calling the SavedModel in-process.

    python bench/serving.py [--model-base-path exported/mnist]

Measures, on this machine, with one 28x28x1 image per request:
  1. p50/p99 latency at concurrency 1: in-process signature call vs the server
     (batching on and off);
  2. throughput at concurrency 32 with batching on vs off;
  3. a soak run (60 s by default) at concurrency 32 with batching on, counting errors.
The server runs as `python -m tfpipeline.serve` on 127.0.0.1 with --port 0 and its default
flags. Everything else runs in child processes of this script too, so no two measurements
share an interpreter: the in-process reference (once with the server's TensorFlow thread
settings, the like-for-like comparison, and once with TensorFlow's defaults), and the load
generator, a minimal HTTP/1.1 keep-alive client on asyncio streams that sends pre-encoded
requests, so that on a small machine it takes as little CPU as possible from the server
(it reports its own CPU share). The model alone is also timed at batch 1 and 32: that
ratio is the most batching could give if HTTP and JSON cost nothing.
If the base path has no versions (a fresh clone), an untrained convnet with the MNIST
baseline's layer sizes is exported to a temp dir and used instead. Prints a table and writes
JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import urlopen

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MNIST_TEST_IMAGES = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
PREDICT = "/v1/models/mnist:predict"


@dataclass
class Run:
    """One measured configuration."""

    name: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None
    mean_batch: float | None = None
    client_cpu_share: float | None = None  # CPU seconds of the load generator per second
    error_samples: list = field(default_factory=list)


def percentiles(latencies: list[float], run: Run) -> Run:
    if latencies:
        run.p50_ms = float(np.percentile(latencies, 50) * 1e3)
        run.p99_ms = float(np.percentile(latencies, 99) * 1e3)
    return run


def test_images(count: int) -> tuple[np.ndarray, str]:
    """Real MNIST test digits when the shared copy is there (realistic JSON sizes)."""
    if MNIST_TEST_IMAGES.is_file():
        with gzip.open(MNIST_TEST_IMAGES) as f:
            data = np.frombuffer(f.read(), np.uint8, offset=16)
        return data.reshape(-1, 28, 28, 1)[:count].copy(), "MNIST test images"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8), "random uint8 images"


def find_or_build_model(base: Path, workdir: Path) -> tuple[Path, str]:
    sys.path.insert(0, str(ROOT))
    from tfpipeline.serving.versions import discover_versions

    versions = discover_versions(base)
    if versions:
        return base, f"{base} (version {max(versions)})"
    sys.path.insert(0, str(ROOT / "tests"))
    import savedmodel_factory

    built = workdir / "mnist"
    savedmodel_factory.export_version(built, 1, arch="convnet")
    return built, ("untrained convnet with the MNIST baseline's layer sizes (Conv32-Pool-"
                   f"Conv64-Pool-Dense10), built because {base} has no versions")


# -- in-process reference (child process) ---------------------------------------------

def in_process(version_dir: Path, images: np.ndarray, count: int, intra: int, inter: int) -> dict:
    """Latency of one-image calls and the model's images/s at batch 1 and 32, with these
    TensorFlow thread settings (0 = TensorFlow's default); runs in a child process."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]

    def call(batch):
        return {k: v.numpy() for k, v in signature(images=tf.constant(batch)).items()}

    for _ in range(50):
        call(images[:1])
    latencies = []
    for i in range(count):
        start = time.perf_counter()
        call(images[i % len(images):][:1])
        latencies.append(time.perf_counter() - start)
    run = percentiles(latencies, Run("in-process, 1 image", requests=count))
    return {"run": asdict(run),
            "images_per_s": {"batch 1": model_rate(call, images[:1], 1),
                             "batch 1, 2 threads": model_rate(call, images[:1], 2),
                             "batch 32": model_rate(call, images[:32], 1)}}


def model_rate(call, batch: np.ndarray, threads: int, seconds: float = 3.0) -> dict:
    """Images/s and CPU seconds per image for back-to-back calls from `threads` threads: the
    unbatched server calls from 2 threads at once, the batching one from 1."""
    calls = [0] * threads
    deadline = time.perf_counter() + seconds

    def worker(i):
        while time.perf_counter() < deadline:
            call(batch)
            calls[i] += 1

    started, cpu = time.perf_counter(), time.process_time()
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    images = sum(calls) * len(batch)
    return {"images_per_s": images / (time.perf_counter() - started),
            "cpu_ms_per_image": (time.process_time() - cpu) / images * 1e3}


def run_in_process(version_dir: Path, count: int, intra: int, inter: int) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--child-in-process", str(version_dir), "--latency-requests",
         str(count), "--child-threads", str(intra), str(inter)],
        env=_env(), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, check=True)
    return json.loads(output.stdout.splitlines()[-1])


# -- the server ---------------------------------------------------------------------------

def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


@contextmanager
def server(base: Path, *flags: str):
    command = [sys.executable, "-m", "tfpipeline.serve", "--model-name", "mnist",
               "--model-base-path", str(base), "--port", "0", *flags]
    env = _env()
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log,
                               stdin=subprocess.DEVNULL, text=True)
    try:
        url = None
        for line in process.stdout:  # ends if the process exits before printing its URL
            match = re.search(r"Serving mnist at (http://\S+)", line)
            if match:
                url = match.group(1)
                break
        if url is None:
            log.seek(0)
            raise SystemExit(f"server did not start:\n{log.read()}")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def load(url: str, name: str, concurrency: int, max_requests: int, max_seconds: float) -> Run:
    """Run the load generator in a child process, so it has an interpreter of its own."""
    output = subprocess.run(
        [sys.executable, __file__, "--child-load", url, "--concurrency", str(concurrency),
         "--child-limits", str(max_requests), str(max_seconds)],
        env=_env(), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, check=True)
    run = Run(**json.loads(output.stdout.splitlines()[-1]))
    run.name = name
    return run


def request_bytes(url: str, images: np.ndarray) -> list[bytes]:
    """Complete HTTP/1.1 requests (keep-alive), one image each, encoded once up front."""
    host = urlsplit(url).netloc
    requests = []
    for i in range(len(images)):
        body = json.dumps({"instances": images[i:i + 1].tolist()}).encode()
        head = (f"POST {PREDICT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        requests.append(head.encode() + body)
    return requests


async def generate_load(url: str, requests: list[bytes], run: Run, concurrency: int,
                        max_requests: int, max_seconds: float) -> None:
    """`concurrency` keep-alive connections in a closed loop until `max_requests` or
    `max_seconds`. The server is aiohttp, which always answers with a Content-Length."""
    parts = urlsplit(url)
    latencies: list[float] = []
    deadline = time.perf_counter() + max_seconds
    issued = 0

    async def client():
        nonlocal issued
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while issued < max_requests and time.perf_counter() < deadline:
                request = requests[issued % len(requests)]
                issued += 1
                start = time.perf_counter()
                writer.write(request)
                status, answer = await read_response(reader)
                latencies.append(time.perf_counter() - start)
                run.requests += 1
                if status != 200:
                    run.errors += 1
                    if len(run.error_samples) < 5:
                        run.error_samples.append(answer[:200].decode(errors="replace"))
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    run.seconds = time.perf_counter() - began
    percentiles(latencies, run)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def child_load(url: str, concurrency: int, max_requests: int, max_seconds: float) -> Run:
    images, _ = test_images(1000)
    requests = request_bytes(url, images)
    run = Run("load")
    before = _stats(url)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    gc.freeze()
    asyncio.run(generate_load(url, requests, run, concurrency, max_requests, max_seconds))
    after_usage = resource.getrusage(resource.RUSAGE_SELF)
    after = _stats(url)
    cpu = (after_usage.ru_utime + after_usage.ru_stime) - (usage.ru_utime + usage.ru_stime)
    run.client_cpu_share = cpu / run.seconds
    run.throughput = run.requests / run.seconds
    calls = after["model_calls"] - before["model_calls"]
    if calls:
        run.mean_batch = (after["instances"] - before["instances"]) / calls
    return run


def _stats(url: str) -> dict:
    with urlopen(url + "/monitoring/stats", timeout=30) as response:
        return json.load(response)


def warm(url: str, concurrency: int) -> None:
    load(url, "warm-up", concurrency, 200, 10)


# -- report -------------------------------------------------------------------------------

def fmt(value, spec: str) -> str:
    width = int(re.match(r"\d*", spec).group() or 0)
    return "-".rjust(width) if value is None else format(value, spec)


def print_table(runs: list[Run]) -> None:
    print(f"{'run':52} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'req/s':>8} {'batch':>6} {'client CPU':>10}")
    for r in runs:
        print(f"{r.name:52} {r.requests:8d} {r.errors:6d} {fmt(r.p50_ms, '8.2f')} "
              f"{fmt(r.p99_ms, '8.2f')} {fmt(r.throughput, '8.0f')} {fmt(r.mean_batch, '6.1f')} "
              f"{fmt(r.client_cpu_share, '10.2f')}")


def print_model(label: str, rates: dict) -> None:
    one, two, batch = rates["batch 1"], rates["batch 1, 2 threads"], rates["batch 32"]
    print(f"model alone, {label}: images/s {one['images_per_s']:.0f} at batch 1, "
          f"{two['images_per_s']:.0f} at batch 1 from 2 threads, {batch['images_per_s']:.0f} at "
          f"batch 32; CPU ms per image {one['cpu_ms_per_image']:.3f} / "
          f"{two['cpu_ms_per_image']:.3f} / {batch['cpu_ms_per_image']:.3f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-base-path", type=Path, default=ROOT / "exported" / "mnist")
    p.add_argument("--latency-requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--throughput-seconds", type=float, default=10)
    p.add_argument("--soak-seconds", type=float, default=60)
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/)")
    # The child processes this script starts for the in-process reference and the load.
    p.add_argument("--child-in-process", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-threads", type=int, nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--child-load", help=argparse.SUPPRESS)
    p.add_argument("--child-limits", type=float, nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_in_process:
        images, _ = test_images(1000)
        print(json.dumps(in_process(args.child_in_process, images, args.latency_requests,
                                    *args.child_threads)))
        return 0
    if args.child_load:
        requests, seconds = args.child_limits
        print(json.dumps(asdict(child_load(args.child_load, args.concurrency, int(requests),
                                           seconds))))
        return 0

    sys.path.insert(0, str(ROOT))
    from tfpipeline.serve import DEFAULT_BATCH_THREADS, default_tf_threads

    threads = default_tf_threads(DEFAULT_BATCH_THREADS)
    with tempfile.TemporaryDirectory() as workdir:
        base, model_label = find_or_build_model(args.model_base_path, Path(workdir))
        from tfpipeline.serving.versions import discover_versions

        version_dir = discover_versions(base)[max(discover_versions(base))]
        _, images_label = test_images(1)
        print(f"model: {model_label}\ninputs: {images_label}, one per request\n", flush=True)
        load_before = os.getloadavg()
        c, n, t = args.concurrency, args.latency_requests, args.throughput_seconds
        local = run_in_process(version_dir, n, *threads)
        default = run_in_process(version_dir, n, 0, 0)
        runs = [Run(**{**local["run"], "name": f"in-process, 1 image, server's TF threads {threads}"}),
                Run(**{**default["run"], "name": "in-process, 1 image, TF default threads"})]
        with server(base) as url:
            warm(url, c)
            runs.append(load(url, "server, batching on, concurrency 1", 1, n, 120))
            runs.append(load(url, f"server, batching on, concurrency {c}", c, 10**7, t))
            runs.append(load(url, f"soak {args.soak_seconds:.0f} s, batching on, concurrency {c}",
                             c, 10**8, args.soak_seconds))
        with server(base, "--no-batching") as url:
            warm(url, c)
            runs.append(load(url, "server, batching off, concurrency 1", 1, n, 120))
            runs.append(load(url, f"server, batching off, concurrency {c}", c, 10**7, t))
        load_after = os.getloadavg()

    on, off, soak = runs[3], runs[6], runs[4]
    rates = local["images_per_s"]
    result = {
        "p50_overhead_ms": runs[2].p50_ms - runs[0].p50_ms,
        "p50_overhead_vs_tf_defaults_ms": runs[2].p50_ms - runs[1].p50_ms,
        "batching_speedup": on.throughput / off.throughput,
        # What batching could give if HTTP and JSON were free: the model's own images/s at
        # batch 32 (one call at a time, as the batcher) over batch 1 (one caller, and two
        # callers as the unbatched server's two batch threads), and its CPU cost per image
        # at batch 1 over batch 32 (the bound once the cores are saturated).
        "model_speedup_batch32": rates["batch 32"]["images_per_s"] / rates["batch 1"]["images_per_s"],
        "model_speedup_batch32_vs_2_threads": (rates["batch 32"]["images_per_s"]
                                               / rates["batch 1, 2 threads"]["images_per_s"]),
        "model_cpu_ratio_batch1_batch32": (rates["batch 1"]["cpu_ms_per_image"]
                                           / rates["batch 32"]["cpu_ms_per_image"]),
        "soak_errors": soak.errors,
    }
    goals = {
        "p50 within +1 ms of in-process": result["p50_overhead_ms"] <= 1.0,
        "batching >= 5x throughput at concurrency 32": result["batching_speedup"] >= 5,
        "0 errors in the soak run": soak.errors == 0 and soak.requests > 0,
    }
    print_table(runs)
    print(f"\nserver p50 overhead over in-process: {result['p50_overhead_ms']:+.2f} ms with the "
          f"server's TF threads, {result['p50_overhead_vs_tf_defaults_ms']:+.2f} ms against "
          "TF's default threads")
    print(f"throughput batching on / off at concurrency {c}: {result['batching_speedup']:.2f}x")
    print_model(f"server's TF threads {threads}", rates)
    print_model("TF default threads", default["images_per_s"])
    print(f"model alone, batch 32 over batch 1: {result['model_speedup_batch32']:.1f}x images/s "
          f"({result['model_speedup_batch32_vs_2_threads']:.1f}x over 2 threads at batch 1), "
          f"{result['model_cpu_ratio_batch1_batch32']:.1f}x less CPU per image "
          "(the ceiling for batching if HTTP and JSON cost nothing)")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
          f"on {os.cpu_count()} cores (client and server share them)")
    for goal, met in goals.items():
        print(f"  [{'met' if met else 'NOT met'}] {goal}")

    out = args.out or ROOT / "bench" / "results" / f"serving-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": model_label, "inputs": images_label,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": load_after},
        "args": {k: str(v) for k, v in vars(args).items()},
        "server_tf_threads": threads,
        "runs": [asdict(r) for r in runs],
        "model_alone": {"server_threads": rates, "tf_default_threads": default["images_per_s"]},
        "summary": result, "goals": goals,
    }, indent=2))
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
