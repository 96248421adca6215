"""One-example latency of a text or table export: in-process against our server's REST API.

    python -m bench.kind_serving exported/election-tweets-2016/1 [--requests 1000]

The issues' goal for text and tables: REST p50 for one example within 1 ms of the in-process
signature call. The examples are the export's own input spec's `random_examples` (strings of its
vocabulary for text, values of each column's kind for a table), sent one at a time: in-process
through `serving_default` (in child processes: with the server's TensorFlow thread settings, the
like-for-like call the goal compares with, and with TensorFlow's defaults), and over REST
(`:predict`, the columnar `inputs` form) by a keep-alive HTTP/1.1 client to
`python -m tfpipeline.serve` on 127.0.0.1. Both in one invocation, so the difference is
comparable whatever the machine's speed that day. Prints the table and writes JSON to
bench/results/.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import results
from bench.serving import ROOT, _env, one_call_latencies, p50_p99_ms, server, serving_signature
from tfpipeline import start_tensorflow_quietly


def _examples(version_dir: Path, count: int) -> list[dict]:
    """`count` one-example requests (name → list of one value) of the export's input spec."""
    from tfpipeline import inputs

    metadata = json.loads((version_dir / "metadata.json").read_text())
    spec = inputs.from_json(metadata["dataset"]["input"])
    request = spec.request(spec.random_examples(count, seed=0))

    def plain(value):
        return value.decode() if isinstance(value, bytes) else value.item() if hasattr(value, "item") else value
    return [{name: [plain(values[i])] for name, values in request.items()} for i in range(count)]


def _percentiles(latencies: list[float]) -> dict:
    p50, p99 = p50_p99_ms(latencies)
    return {"p50_ms": p50, "p99_ms": p99, "requests": len(latencies)}


def in_process(version_dir: Path, count: int, intra: int = 0, inter: int = 0) -> dict:
    """p50/p99 of one-example `serving_default` calls (run in a child: its own TensorFlow), with
    these TensorFlow thread settings (0: TensorFlow's defaults)."""
    import tensorflow as tf

    signature = serving_signature(version_dir, intra, inter)
    dtypes = {name: object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype
              for name, spec in signature.structured_input_signature[1].items()}
    calls = [{name: np.array(value, dtype=dtypes[name]) for name, value in example.items()}
             for example in _examples(version_dir, count)]

    def call(arrays):  # from NumPy arrays to NumPy arrays, as a server's call is (the image bench's too)
        return {k: v.numpy() for k, v in signature(**{k: tf.constant(a) for k, a in arrays.items()}).items()}

    return _percentiles(one_call_latencies(call, calls))


def over_rest(url: str, name: str, version_dir: Path, count: int) -> dict:
    """p50/p99 of one-example `:predict` requests over one keep-alive connection."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port))
    bodies = [json.dumps({"inputs": example}).encode() for example in _examples(version_dir, count)]
    latencies = []
    for i, body in enumerate(bodies[:50] + bodies):
        start = time.perf_counter()
        connection.request("POST", f"/v1/models/{name}:predict", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise SystemExit(f"REST {response.status}: {payload[:500]!r}")
        if i >= 50:
            latencies.append(time.perf_counter() - start)
    return _percentiles(latencies)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version_dir", type=Path, help="an export's version folder (exported/<name>/<N>)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--child-threads", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    start_tensorflow_quietly()  # before anything here imports TensorFlow
    version_dir = args.version_dir.resolve()
    if args.child_threads:
        print(json.dumps(in_process(version_dir, args.requests, *args.child_threads)))
        return 0
    from tfpipeline.serve import DEFAULT_BATCH_THREADS, default_tf_threads

    result = {"version_dir": str(version_dir)}
    # The like-for-like call uses the server's thread settings (one intra-op thread per batch
    # thread on two cores: a core stays for the event loop); TensorFlow's defaults beside it.
    for label, threads in (("in_process_server_threads", default_tf_threads(DEFAULT_BATCH_THREADS)),
                           ("in_process_tf_defaults", (0, 0))):
        child = subprocess.run([sys.executable, "-m", "bench.kind_serving", str(version_dir), "--requests",
                                str(args.requests), "--child-threads", *map(str, threads)], env=_env(), cwd=ROOT,
                               check=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        result[label] = {**json.loads(child.stdout.splitlines()[-1]), "threads": list(threads)}
    with server(version_dir.parent) as endpoints:
        result["rest"] = over_rest(endpoints.rest, "mnist", version_dir, args.requests)
    result["rest_minus_in_process_p50_ms"] = result["rest"]["p50_ms"] - result["in_process_server_threads"]["p50_ms"]
    for label in ("in_process_server_threads", "in_process_tf_defaults", "rest"):
        row = result[label]
        print(f"{label:26s} p50 {row['p50_ms']:7.3f} ms   p99 {row['p99_ms']:7.3f} ms   ({row['requests']} requests)")
    print(f"REST adds {result['rest_minus_in_process_p50_ms']:.3f} ms at p50 to the call with the server's threads")
    print(f"wrote {results.write('kind_serving', result, argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
