"""Benchmark the REST server against calling the SavedModel in-process.

    python bench/serving.py [--model-base-path exported/mnist]

Measures, on this machine, with one 28x28x1 image per request:
  1. p50/p99 latency at concurrency 1: in-process signature call vs the server
     (batching on and off);
  2. throughput at concurrency 32 with batching on vs off;
  3. a soak run (60 s by default) at concurrency 32 with batching on, counting errors.
The server runs as `python -m tfpipeline.serve` on 127.0.0.1 with --port 0; the load
generator is an aiohttp client in this process, bounded by request count and time.
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
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
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


# -- in-process reference -----------------------------------------------------------------

def in_process(version_dir: Path, images: np.ndarray, count: int) -> tuple[Run, dict]:
    import tensorflow as tf

    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]

    def call(batch):
        return {k: v.numpy() for k, v in signature(images=tf.constant(batch)).items()}

    one = images[:1]
    for _ in range(50):
        call(one)
    latencies = []
    for i in range(count):
        start = time.perf_counter()
        call(images[i % len(images):][:1])
        latencies.append(time.perf_counter() - start)
    run = percentiles(latencies, Run("in-process, 1 image", requests=count))
    # The ceiling batching can reach with this model: time per image in batches of 1 vs 32.
    ceiling = {}
    for size in (1, 32):
        batch = images[:size]
        start = time.perf_counter()
        calls = max(20, 200 // size)
        for _ in range(calls):
            call(batch)
        ceiling[size] = (time.perf_counter() - start) / (calls * size)
    return run, {"model_images_per_s_batch1": 1 / ceiling[1],
                 "model_images_per_s_batch32": 1 / ceiling[32],
                 "model_speedup_batch32": ceiling[1] / ceiling[32]}


# -- the server ---------------------------------------------------------------------------

@contextmanager
def server(base: Path, *flags: str):
    command = [sys.executable, "-m", "tfpipeline.serve", "--model-name", "mnist",
               "--model-base-path", str(base), "--port", "0", *flags]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
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


async def load(url: str, bodies: list[bytes], name: str, concurrency: int,
               max_requests: int, max_seconds: float) -> Run:
    """`concurrency` clients in a closed loop until `max_requests` or `max_seconds`."""
    run = Run(name)
    latencies: list[float] = []
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        stats_before = await _stats(session, url)
        deadline = time.perf_counter() + max_seconds
        issued = 0

        async def client():
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                body = bodies[issued % len(bodies)]
                issued += 1
                start = time.perf_counter()
                try:
                    async with session.post(url + PREDICT, data=body, headers=headers) as resp:
                        answer = await resp.read()
                        ok = resp.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    ok, answer = False, repr(exc).encode()
                latencies.append(time.perf_counter() - start)
                run.requests += 1
                if not ok:
                    run.errors += 1
                    if len(run.error_samples) < 5:
                        run.error_samples.append(answer[:200].decode(errors="replace"))

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - began
        stats_after = await _stats(session, url)
    run.throughput = run.requests / run.seconds
    calls = stats_after["model_calls"] - stats_before["model_calls"]
    if calls:
        run.mean_batch = (stats_after["instances"] - stats_before["instances"]) / calls
    return percentiles(latencies, run)


async def _stats(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url + "/monitoring/stats") as resp:
        return await resp.json()


def warm(url: str, bodies: list[bytes], concurrency: int) -> None:
    asyncio.run(load(url, bodies, "warm-up", concurrency, 200, 10))


# -- report -------------------------------------------------------------------------------

def fmt(value, spec: str) -> str:
    width = int(re.match(r"\d*", spec).group() or 0)
    return "-".rjust(width) if value is None else format(value, spec)


def print_table(runs: list[Run]) -> None:
    print(f"{'run':44} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'req/s':>8} {'batch':>6}")
    for r in runs:
        print(f"{r.name:44} {r.requests:8d} {r.errors:6d} {fmt(r.p50_ms, '8.2f')} "
              f"{fmt(r.p99_ms, '8.2f')} {fmt(r.throughput, '8.0f')} {fmt(r.mean_batch, '6.1f')}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-base-path", type=Path, default=ROOT / "exported" / "mnist")
    p.add_argument("--latency-requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--throughput-seconds", type=float, default=10)
    p.add_argument("--soak-seconds", type=float, default=60)
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as workdir:
        base, model_label = find_or_build_model(args.model_base_path, Path(workdir))
        from tfpipeline.serving.versions import discover_versions

        version_dir = discover_versions(base)[max(discover_versions(base))]
        images, images_label = test_images(1000)
        print(f"model: {model_label}\ninputs: {images_label}, one per request\n", flush=True)
        bodies = [json.dumps({"instances": images[i:i + 1].tolist()}).encode()
                  for i in range(len(images))]
        load_before = os.getloadavg()
        local, ceiling = in_process(version_dir, images, args.latency_requests)
        # This process now holds TensorFlow's large heap; keep the garbage collector from
        # walking it in the middle of the client's timings.
        gc.freeze()
        runs = [local]
        c, n, t = args.concurrency, args.latency_requests, args.throughput_seconds
        with server(base) as url:
            warm(url, bodies, c)
            runs.append(asyncio.run(load(url, bodies, "server, batching on, concurrency 1", 1, n, 120)))
            runs.append(asyncio.run(load(url, bodies, f"server, batching on, concurrency {c}", c,
                                         10**7, t)))
            runs.append(asyncio.run(load(url, bodies, f"soak {args.soak_seconds:.0f} s, batching on, "
                                         f"concurrency {c}", c, 10**8, args.soak_seconds)))
        with server(base, "--no-batching") as url:
            warm(url, bodies, c)
            runs.append(asyncio.run(load(url, bodies, "server, batching off, concurrency 1", 1, n, 120)))
            runs.append(asyncio.run(load(url, bodies, f"server, batching off, concurrency {c}", c,
                                         10**7, t)))
        load_after = os.getloadavg()

    on, off, soak = runs[2], runs[5], runs[3]
    result = {
        "p50_overhead_ms": runs[1].p50_ms - local.p50_ms,
        "batching_speedup": on.throughput / off.throughput,
        "soak_errors": soak.errors,
    }
    goals = {
        "p50 within +1 ms of in-process": result["p50_overhead_ms"] <= 1.0,
        "batching >= 5x throughput at concurrency 32": result["batching_speedup"] >= 5,
        "0 errors in the soak run": soak.errors == 0 and soak.requests > 0,
    }
    print_table(runs)
    print(f"\nserver p50 overhead over in-process: {result['p50_overhead_ms']:+.2f} ms")
    print(f"throughput batching on / off at concurrency {c}: {result['batching_speedup']:.2f}x")
    print(f"model alone, images/s at batch 32 vs batch 1: {ceiling['model_speedup_batch32']:.1f}x "
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
        "runs": [asdict(r) for r in runs], "model_ceiling": ceiling,
        "summary": result, "goals": goals,
    }, indent=2))
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
