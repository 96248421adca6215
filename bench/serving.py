"""Benchmark the server over gRPC and REST against calling the SavedModel in-process.

    python -m bench.serving [--model-base-path exported/mnist] [--soak-seconds 60]

Measures, on this machine, with one 28x28x1 image per request:
  1. p50/p99 latency at concurrency 1: the in-process signature call vs the server over gRPC
     (TF Serving's PredictionServiceStub, raw tensor_content) and over REST (JSON), with
     batching on and off;
  2. throughput at concurrency 32 over gRPC and REST, batching on and off, against the model
     alone at batch 32 (one call at a time: the ceiling for batching if transport were free);
  3. a soak run (60 s by default) at concurrency 32 over gRPC and REST together, with
     batching on: every request must get a 200/OK (0 errors, 0 lost);
  4. an overload run: more concurrency than the batching queue holds (a server started with
     a --batching_parameters_file of max_batch_size 8, max_enqueued_batches 1): the only
     failures allowed are clean 503/UNAVAILABLE refusals, and nothing may be lost.
The server runs as `python -m tfpipeline.serve` on 127.0.0.1 with ports 0. Everything else
runs in child processes of this script too, so no two measurements share an interpreter: the
in-process reference (once with the server's TensorFlow thread settings, the like-for-like
comparison, and once with TensorFlow's defaults), and the load generators: a minimal HTTP/1.1
keep-alive client on asyncio streams sending pre-encoded requests, and a grpc.aio client
sending pre-built PredictRequests, each reporting its own CPU share.
If the base path has no versions (a fresh clone), the project's default CNN
(tfpipeline.models.cnn, untrained) is exported with tfpipeline.export.write_savedmodel and a
warm-up file to a temp dir and used instead. Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import json
import os
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

from bench import results

ROOT = Path(__file__).resolve().parents[1]
MNIST_TEST_IMAGES = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
PREDICT = "/v1/models/mnist:predict"
OVERLOAD_BATCHING = ("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 2000 }\n"
                     "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 1 }\n")


@dataclass
class Run:
    """One measured configuration."""

    name: str
    requests: int = 0  # answered (OK, refused or error)
    errors: int = 0  # answers other than OK and clean overload refusals
    refused: int = 0  # 503 / UNAVAILABLE "overloaded": the server's back-pressure
    lost: int = 0  # sent and never answered (connection dropped, timed out)
    seconds: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None  # OK answers per second
    mean_batch: float | None = None
    client_cpu_share: float | None = None  # CPU seconds of the load generator per second
    error_samples: list = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.error_samples) < 5:
            self.error_samples.append(text[:200])


def p50_p99_ms(latencies: list[float]) -> tuple[float, float]:
    """The median and 99th percentile of `latencies` (seconds), in ms: the one rule every serving
    benchmark reports by (NumPy's linear interpolation between the nearest ranks)."""
    return float(np.percentile(latencies, 50) * 1e3), float(np.percentile(latencies, 99) * 1e3)


def percentiles(latencies: list[float], run: Run) -> Run:
    if latencies:
        run.p50_ms, run.p99_ms = p50_p99_ms(latencies)
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
    from tfpipeline.export import write_savedmodel
    from tfpipeline.export.warmup import write_warmup_requests
    from tfpipeline.inputs.image import ImageInput
    from tfpipeline.models import cnn

    built = workdir / "mnist" / "1"
    spec = ImageInput(28, 28, 1)
    write_savedmodel(cnn.build(spec.shape, 10), spec, built)
    write_warmup_requests(built, spec.warmup_requests(test_images(3)[0]))
    return built.parent, ("the default CNN (tfpipeline.models.cnn, untrained), exported because "
                          f"{base} has no versions")


# -- in-process reference (child process) ---------------------------------------------

def serving_signature(version_dir: Path, intra: int, inter: int):
    """The export's `serving_default`, loaded with these TensorFlow thread settings (0 =
    TensorFlow's default). Call it first in a process: the settings must precede any op."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    return tf.saved_model.load(str(version_dir)).signatures["serving_default"]


def one_call_latencies(call, inputs: list, warmup: int = 50) -> list[float]:
    """Seconds of each `call(x)` for x in `inputs`, one after another, after `warmup` untimed
    calls on the first inputs (tracing, caches)."""
    for x in inputs[:warmup]:
        call(x)
    latencies = []
    for x in inputs:
        start = time.perf_counter()
        call(x)
        latencies.append(time.perf_counter() - start)
    return latencies


def in_process(version_dir: Path, images: np.ndarray, count: int, intra: int, inter: int) -> dict:
    """Latency of one-image calls and the model's images/s at batch 1 and 32, with these
    TensorFlow thread settings (0 = TensorFlow's default); runs in a child process."""
    import tensorflow as tf

    signature = serving_signature(version_dir, intra, inter)

    def call(batch):
        return {k: v.numpy() for k, v in signature(images=tf.constant(batch)).items()}

    latencies = one_call_latencies(call, [images[i % len(images):][:1] for i in range(count)])
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
        [sys.executable, "-m", "bench.serving", "--child-in-process", str(version_dir), "--latency-requests",
         str(count), "--child-threads", str(intra), str(inter)],
        env=_env(), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, check=True)
    return json.loads(output.stdout.splitlines()[-1])


# -- the server ---------------------------------------------------------------------------

def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


@dataclass
class Endpoints:
    rest: str  # http://host:port
    grpc: str  # host:port


@contextmanager
def server(base: Path, *flags: str):
    command = [sys.executable, "-m", "tfpipeline.serve", "--model_name=mnist",
               f"--model_base_path={base}", "--port=0", "--rest_api_port=0", *flags]
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                               stderr=log, stdin=subprocess.DEVNULL, text=True)
    try:
        rest = grpc_target = None
        for line in process.stdout:  # ends if the process exits before printing its URLs
            match = re.search(r"Serving gRPC at (\S+)", line)
            if match:
                grpc_target = match.group(1)
            match = re.search(r"Serving mnist at (http://\S+)", line)
            if match:
                rest = match.group(1)
                break
        if rest is None or grpc_target is None:
            log.seek(0)
            raise SystemExit(f"server did not start:\n{log.read()}")
        yield Endpoints(rest, grpc_target)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@dataclass
class Load:
    """One load generator: `protocol` rest or grpc, in a child process of its own."""

    protocol: str
    name: str
    concurrency: int
    max_requests: int
    max_seconds: float
    method: str = "predict"  # or "status": an empty call, the transport's floor


def run_loads(endpoints: Endpoints, loads: list[Load]) -> list[Run]:
    """Run the load generators at the same time, each in its own child process."""
    children = []
    for item in loads:
        target = endpoints.grpc if item.protocol == "grpc" else endpoints.rest
        children.append(subprocess.Popen(
            [sys.executable, "-m", "bench.serving", f"--child-{item.protocol}-load", target,
             "--child-stats", endpoints.rest, "--child-method", item.method,
             "--concurrency", str(item.concurrency),
             "--child-limits", str(item.max_requests), str(item.max_seconds)],
            env=_env(), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True))
    runs = []
    for item, child in zip(loads, children):
        stdout, _ = child.communicate()
        if child.returncode:
            raise SystemExit(f"load generator {item.name} failed with status {child.returncode}")
        run = Run(**json.loads(stdout.splitlines()[-1]))
        run.name = item.name
        runs.append(run)
    return runs


def load(endpoints: Endpoints, protocol: str, name: str, concurrency: int, max_requests: int,
         max_seconds: float, method: str = "predict") -> Run:
    return run_loads(endpoints, [Load(protocol, name, concurrency, max_requests, max_seconds,
                                      method)])[0]


# -- load generators (child processes) ----------------------------------------------------

def request_bytes(url: str, images: np.ndarray, method: str = "predict") -> list[bytes]:
    """Complete HTTP/1.1 requests (keep-alive), one image each, encoded once up front."""
    host = urlsplit(url).netloc
    if method == "status":
        return [f"GET /v1/models/mnist HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()]
    requests = []
    for i in range(len(images)):
        body = json.dumps({"instances": images[i:i + 1].tolist()}).encode()
        head = (f"POST {PREDICT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        requests.append(head.encode() + body)
    return requests


async def generate_rest_load(url: str, requests: list[bytes], run: Run, concurrency: int,
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
                try:
                    writer.write(request)
                    status, answer = await asyncio.wait_for(read_response(reader), 60)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                    run.lost += 1
                    run.note(f"lost: {exc!r}")
                    writer.close()
                    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                    continue
                run.requests += 1
                if status == 200:
                    latencies.append(time.perf_counter() - start)
                elif status == 503 and b"overloaded" in answer:
                    run.refused += 1
                else:
                    run.errors += 1
                    run.note(f"{status} {answer.decode(errors='replace')}")
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    run.seconds = time.perf_counter() - began
    run.throughput = len(latencies) / run.seconds
    percentiles(latencies, run)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def grpc_request_bytes(images: np.ndarray, method: str = "predict") -> list[bytes]:
    """Serialized PredictRequests, one image each as raw tensor_content, built once up front
    with TF Serving's messages, so the timed loop spends nothing on protobuf."""
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

    if method == "status":
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "mnist"
        return [request.SerializeToString()]

    requests = []
    for i in range(len(images)):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mnist"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images[i:i + 1]))
        requests.append(request.SerializeToString())
    return requests


GRPC_METHODS = {"predict": "/tensorflow.serving.PredictionService/Predict",
                "status": "/tensorflow.serving.ModelService/GetModelStatus"}


def _grpc_outcome(run: Run, exc) -> None:
    import grpc

    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED) and \
            "overloaded" in (exc.details() or ""):
        run.requests += 1
        run.refused += 1
    elif exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.CANCELLED):
        run.lost += 1  # no answer from the server itself
        run.note(f"lost: {exc.code().name} {exc.details()}")
    else:
        run.requests += 1
        run.errors += 1
        run.note(f"{exc.code().name} {exc.details()}")


def generate_grpc_load_sync(target: str, method: str, requests: list[bytes], run: Run,
                            max_requests: int, max_seconds: float) -> None:
    """Concurrency 1: a plain blocking call in a loop, as most TF Serving clients are written
    (grpc's synchronous stub has less per-call overhead than grpc.aio)."""
    import grpc

    latencies: list[float] = []
    deadline = time.perf_counter() + max_seconds
    with grpc.insecure_channel(target) as channel:
        predict = channel.unary_unary(GRPC_METHODS[method])  # bytes in, bytes out
        began = time.perf_counter()
        for issued in range(max_requests):
            if time.perf_counter() >= deadline:
                break
            start = time.perf_counter()
            try:
                predict(requests[issued % len(requests)], timeout=60)
            except grpc.RpcError as exc:
                _grpc_outcome(run, exc)
                continue
            run.requests += 1
            latencies.append(time.perf_counter() - start)
        run.seconds = time.perf_counter() - began
    run.throughput = len(latencies) / run.seconds
    percentiles(latencies, run)


async def generate_grpc_load(target: str, method: str, requests: list[bytes], run: Run,
                             concurrency: int, max_requests: int, max_seconds: float) -> None:
    """The same closed loop as REST's over one grpc.aio channel (HTTP/2 streams), sending
    the pre-serialized PredictRequests to TF Serving's Predict method."""
    import grpc

    latencies: list[float] = []
    deadline = time.perf_counter() + max_seconds
    issued = 0
    async with grpc.aio.insecure_channel(target) as channel:
        predict = channel.unary_unary(GRPC_METHODS[method])  # bytes in, bytes out

        async def client():
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                request = requests[issued % len(requests)]
                issued += 1
                start = time.perf_counter()
                try:
                    await predict(request, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    _grpc_outcome(run, exc)
                    continue
                run.requests += 1
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - began
    run.throughput = len(latencies) / run.seconds
    percentiles(latencies, run)


def child_load(protocol: str, method: str, target: str, stats_url: str, concurrency: int,
               max_requests: int, max_seconds: float) -> Run:
    images, _ = test_images(1000)
    run = Run("load")
    if protocol == "grpc":
        requests = grpc_request_bytes(images, method)
        if concurrency == 1:
            def generate():
                generate_grpc_load_sync(target, method, requests, run, max_requests, max_seconds)
        else:
            def generate():
                asyncio.run(generate_grpc_load(target, method, requests, run, concurrency,
                                               max_requests, max_seconds))
    else:
        requests = request_bytes(target, images, method)

        def generate():
            asyncio.run(generate_rest_load(target, requests, run, concurrency, max_requests,
                                           max_seconds))
    before = _stats(stats_url)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    gc.freeze()
    generate()
    after_usage = resource.getrusage(resource.RUSAGE_SELF)
    after = _stats(stats_url)
    cpu = (after_usage.ru_utime + after_usage.ru_stime) - (usage.ru_utime + usage.ru_stime)
    run.client_cpu_share = cpu / run.seconds
    calls = after["model_calls"] - before["model_calls"]
    if calls:
        run.mean_batch = (after["instances"] - before["instances"]) / calls
    return run


def _stats(url: str) -> dict:
    with urlopen(url + "/monitoring/stats", timeout=30) as response:
        return json.load(response)


def warm(endpoints: Endpoints, concurrency: int) -> None:
    run_loads(endpoints, [Load("rest", "warm-up", concurrency, 200, 10),
                          Load("grpc", "warm-up", concurrency, 200, 10)])


# -- report -------------------------------------------------------------------------------

def fmt(value, spec: str) -> str:
    width = int(re.match(r"\d*", spec).group() or 0)
    return "-".rjust(width) if value is None else format(value, spec)


def print_table(runs: list[Run]) -> None:
    print(f"{'run':50} {'answers':>8} {'errors':>6} {'refused':>7} {'lost':>4} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'OK/s':>7} {'batch':>5} {'client CPU':>10}")
    for r in runs:
        print(f"{r.name:50} {r.requests:8d} {r.errors:6d} {r.refused:7d} {r.lost:4d} "
              f"{fmt(r.p50_ms, '7.2f')} {fmt(r.p99_ms, '7.2f')} {fmt(r.throughput, '7.0f')} "
              f"{fmt(r.mean_batch, '5.1f')} {fmt(r.client_cpu_share, '10.2f')}")


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
    p.add_argument("--soak-seconds", type=float, default=60,
                   help="the gRPC + REST soak run (default 60)")
    p.add_argument("--overload-seconds", type=float, default=10)
    p.add_argument("--overload-concurrency", type=int, default=64,
                   help="per protocol, against a queue of 1 batch of 8 (default 64)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/)")
    # The child processes this script starts for the in-process reference and the load.
    p.add_argument("--child-in-process", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-threads", type=int, nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--child-rest-load", help=argparse.SUPPRESS)
    p.add_argument("--child-grpc-load", help=argparse.SUPPRESS)
    p.add_argument("--child-stats", help=argparse.SUPPRESS)
    p.add_argument("--child-method", default="predict", help=argparse.SUPPRESS)
    p.add_argument("--child-limits", type=float, nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_in_process:
        images, _ = test_images(1000)
        print(json.dumps(in_process(args.child_in_process, images, args.latency_requests,
                                    *args.child_threads)))
        return 0
    if args.child_rest_load or args.child_grpc_load:
        requests, seconds = args.child_limits
        protocol = "grpc" if args.child_grpc_load else "rest"
        target = args.child_grpc_load or args.child_rest_load
        print(json.dumps(asdict(child_load(protocol, args.child_method, target, args.child_stats,
                                           args.concurrency, int(requests), seconds))))
        return 0

    sys.path.insert(0, str(ROOT))
    from tfpipeline.serve import DEFAULT_BATCH_THREADS, default_tf_threads

    threads = default_tf_threads(DEFAULT_BATCH_THREADS)
    c, n, t = args.concurrency, args.latency_requests, args.throughput_seconds
    runs: dict[str, Run] = {}

    def add(*measured: Run) -> None:
        for run in measured:
            runs[run.name] = run

    with tempfile.TemporaryDirectory() as workdir:
        base, model_label = find_or_build_model(args.model_base_path, Path(workdir))
        from tfpipeline.serving.versions import discover_versions

        version_dir = discover_versions(base)[max(discover_versions(base))]
        _, images_label = test_images(1)
        print(f"model: {model_label}\ninputs: {images_label}, one per request\n", flush=True)
        load_before = os.getloadavg()
        local = run_in_process(version_dir, n, *threads)
        default = run_in_process(version_dir, n, 0, 0)
        add(Run(**{**local["run"], "name": f"in-process, 1 image, server's TF threads {threads}"}),
            Run(**{**default["run"], "name": "in-process, 1 image, TF default threads"}))
        for batching in ("on", "off"):
            with server(base, f"--enable_batching={'true' if batching == 'on' else 'false'}") as ends:
                warm(ends, c)
                if batching == "on":
                    for protocol in ("grpc", "rest"):  # empty calls: the transport's floor
                        add(load(ends, protocol, f"{protocol} status (empty call), concurrency 1",
                                 1, n, 120, "status"))
                        add(load(ends, protocol, f"{protocol} status (empty call), concurrency {c}",
                                 c, 10**7, t, "status"))
                for protocol in ("grpc", "rest"):
                    add(load(ends, protocol, f"{protocol}, batching {batching}, concurrency 1",
                             1, n, 120))
                    add(load(ends, protocol, f"{protocol}, batching {batching}, concurrency {c}",
                             c, 10**7, t))
                if batching == "on":
                    half = max(1, c // 2)
                    add(*run_loads(ends, [
                        Load("grpc", f"soak {args.soak_seconds:.0f} s: grpc, concurrency {half}",
                             half, 10**8, args.soak_seconds),
                        Load("rest", f"soak {args.soak_seconds:.0f} s: rest, concurrency {half}",
                             half, 10**8, args.soak_seconds)]))
        batching_file = Path(workdir) / "overload-batching.config"
        batching_file.write_text(OVERLOAD_BATCHING)
        with server(base, f"--batching_parameters_file={batching_file}") as ends:
            warm(ends, 4)
            oc = args.overload_concurrency
            add(*run_loads(ends, [
                Load("grpc", f"overload: grpc, concurrency {oc}, queue 1x8", oc, 10**8,
                     args.overload_seconds),
                Load("rest", f"overload: rest, concurrency {oc}, queue 1x8", oc, 10**8,
                     args.overload_seconds)]))
        load_after = os.getloadavg()

    local_run = runs[f"in-process, 1 image, server's TF threads {threads}"]
    grpc1, rest1 = runs["grpc, batching on, concurrency 1"], runs["rest, batching on, concurrency 1"]
    grpc_c, rest_c = runs[f"grpc, batching on, concurrency {c}"], runs[f"rest, batching on, concurrency {c}"]
    grpc_off = runs[f"grpc, batching off, concurrency {c}"]
    soak = [r for name, r in runs.items() if name.startswith("soak")]
    overload = [r for name, r in runs.items() if name.startswith("overload")]
    rates = local["images_per_s"]
    ceiling = rates["batch 32"]["images_per_s"]
    grpc_floor = runs["grpc status (empty call), concurrency 1"]
    result = {
        "grpc_p50_overhead_ms": grpc1.p50_ms - local_run.p50_ms,
        "grpc_p50_beyond_model_and_floor_ms": grpc1.p50_ms - local_run.p50_ms - grpc_floor.p50_ms,
        "grpc_empty_call_per_s_at_concurrency": runs[f"grpc status (empty call), concurrency {c}"].throughput,
        "rest_p50_overhead_ms": rest1.p50_ms - local_run.p50_ms,
        "grpc_over_rest_throughput": grpc_c.throughput / rest_c.throughput,
        "model_alone_batch32_images_per_s": ceiling,
        "grpc_batching_share_of_ceiling": grpc_c.throughput / ceiling,
        "grpc_batching_on_over_off": grpc_c.throughput / grpc_off.throughput,
        "soak_answers": sum(r.requests for r in soak),
        "soak_errors_and_lost": sum(r.errors + r.lost + r.refused for r in soak),
        "overload_refused": sum(r.refused for r in overload),
        "overload_errors_and_lost": sum(r.errors + r.lost for r in overload),
    }
    goals = {
        "gRPC p50 <= in-process + 0.5 ms": result["grpc_p50_overhead_ms"] <= 0.5,
        f"gRPC throughput at concurrency {c} >= 1.5x REST's": result["grpc_over_rest_throughput"] >= 1.5,
        "gRPC with batching >= 0.8x the model-alone batch-32 ceiling":
            result["grpc_batching_share_of_ceiling"] >= 0.8,
        "soak over gRPC + REST: 0 errors, 0 lost": result["soak_errors_and_lost"] == 0
            and result["soak_answers"] > 0,
        "overload: only clean 503/UNAVAILABLE refusals, 0 lost": result["overload_errors_and_lost"] == 0
            and result["overload_refused"] > 0,
    }
    print_table(list(runs.values()))
    print(f"\np50 over in-process: gRPC {result['grpc_p50_overhead_ms']:+.2f} ms, REST "
          f"{result['rest_p50_overhead_ms']:+.2f} ms (server's TF threads); gRPC beyond the "
          f"model and an empty gRPC call ({grpc_floor.p50_ms:.2f} ms): "
          f"{result['grpc_p50_beyond_model_and_floor_ms']:+.2f} ms")
    print(f"concurrency {c}, batching on: gRPC / REST throughput "
          f"{result['grpc_over_rest_throughput']:.2f}x; gRPC at "
          f"{result['grpc_batching_share_of_ceiling']:.2f}x the model alone at batch 32 "
          f"({ceiling:.0f} images/s); batching on / off over gRPC "
          f"{result['grpc_batching_on_over_off']:.2f}x")
    print_model(f"server's TF threads {threads}", rates)
    print_model("TF default threads", default["images_per_s"])
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
          f"on {os.cpu_count()} cores (clients and server share them)")
    for goal, met in goals.items():
        print(f"  [{'met' if met else 'NOT met'}] {goal}")
    for run in runs.values():
        for sample in run.error_samples:
            print(f"  {run.name}: {sample}")

    out = results.write("serving", {
        "model": model_label, "inputs": images_label,
        "machine": {"loadavg_before": load_before, "loadavg_after": load_after},
        "args": {k: str(v) for k, v in vars(args).items()},
        "server_tf_threads": threads,
        "runs": [asdict(r) for r in runs.values()],
        "model_alone": {"server_threads": rates, "tf_default_threads": default["images_per_s"]},
        "summary": result, "goals": goals,
    }, argv, out=args.out)
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
