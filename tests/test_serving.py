"""The TF Serving compatible server, as a client sees it: a real `python -m tfpipeline.serve`
process on an ephemeral 127.0.0.1 port, serving tiny SavedModels exported into tmp_path."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import ROOT, Server, export_version, random_images, start_server, stop_server
from serving_helpers import env as _env

import tfpipeline

pytestmark = pytest.mark.slow

MAX_INSTANCES = 200
MAX_BODY_BYTES = 1_000_000
PREDICT = "/v1/models/mnist:predict"


def reference(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """The SavedModel called in this process, as a user of tf.saved_model.load would."""
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(images=tf.constant(images)).items()}


@pytest.fixture(scope="module")
def model_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("models") / "mnist"
    export_version(base, 1)
    return base


@pytest.fixture(scope="module")
def server(model_base, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "server.log"
    # TensorFlow's default thread pools, as in this test process: the thread count can change
    # the last bits of a result, and the tests below compare bits with in-process calls.
    server = start_server(model_base, log, "--max-instances", str(MAX_INSTANCES),
                          "--max-body-bytes", str(MAX_BODY_BYTES),
                          "--tensorflow-intra-op-parallelism", "0",
                          "--tensorflow-inter-op-parallelism", "0")
    yield server
    stop_server(server)


def test_server_log_holds_no_tensorflow_noise(server):
    """TensorFlow starts quietly, and the session loader's notices (its own deprecation, each
    restore) stay out: a TF2 export's load leaves only the server's own lines."""
    log = server.log_path.read_text()
    assert "loaded mnist version 1" in log
    for noise in (*tfpipeline._START_UP_NOISE, "is deprecated", "Restoring parameters"):
        assert noise not in log


def test_server_runs_on_uvloop_where_it_is_installed(server):
    # A declared dependency on Linux and macOS (pyproject.toml): the server must really use it.
    assert "; uvloop event loop)" in server.log_path.read_text()


# -- status and metadata ------------------------------------------------------------------

def test_status_has_tf_serving_shape(server):
    expected = {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]}
    assert server.get("/v1/models/mnist") == (200, expected)
    assert server.get("/v1/models/mnist/versions/1") == (200, expected)


@pytest.mark.parametrize("path", ["/v1/models/mnist/metadata", "/v1/models/mnist/versions/1/metadata"])
def test_metadata_lists_signature(server, path):
    status, body = server.get(path)
    assert status == 200
    assert body["model_spec"] == {"name": "mnist", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]

    def dims(info):
        assert info["tensor_shape"]["unknown_rank"] is False
        return [int(d["size"]) for d in info["tensor_shape"]["dim"]]

    images = signature["inputs"]["images"]
    assert list(signature["inputs"]) == ["images"]
    assert images["dtype"] == "DT_UINT8" and dims(images) == [-1, 28, 28, 1]
    outputs = signature["outputs"]
    assert set(outputs) == {"probabilities", "classes"}
    assert outputs["probabilities"]["dtype"] == "DT_FLOAT"
    assert dims(outputs["probabilities"]) == [-1, 10]
    assert outputs["classes"]["dtype"] == "DT_INT64" and dims(outputs["classes"]) == [-1]
    assert signature["method_name"] == "tensorflow/serving/predict"


# -- predict ------------------------------------------------------------------------------

def test_row_format_matches_in_process_call(server, model_base):
    images = random_images(100)
    expected = reference(model_base / "1", images)
    status, body = server.post(PREDICT, {"instances": images.tolist()})
    assert status == 200, body
    predictions = body["predictions"]
    assert len(predictions) == 100
    assert all(set(p) == {"probabilities", "classes"} for p in predictions)
    probabilities = np.array([p["probabilities"] for p in predictions], dtype=np.float32)
    classes = np.array([p["classes"] for p in predictions])
    # One request alone on an idle server is one model call on the same batch: bit-identical.
    np.testing.assert_array_equal(probabilities, expected["probabilities"])
    np.testing.assert_array_equal(classes, expected["classes"])


def test_columnar_format_matches_in_process_call(server, model_base):
    images = random_images(100, seed=1)
    expected = reference(model_base / "1", images)
    status, body = server.post(PREDICT, {"inputs": images.tolist()})
    assert status == 200, body
    outputs = body["outputs"]
    assert set(outputs) == {"probabilities", "classes"}
    np.testing.assert_array_equal(np.array(outputs["probabilities"], np.float32),
                                  expected["probabilities"])
    np.testing.assert_array_equal(outputs["classes"], expected["classes"])
    # The named form of columnar input and an explicit version and signature work too.
    status, named = server.post("/v1/models/mnist/versions/1:predict", {
        "signature_name": "serving_default", "inputs": {"images": images.tolist()}})
    assert (status, named) == (200, body)


def test_row_format_accepts_named_instances(server, model_base):
    images = random_images(3, seed=2)
    status, plain = server.post(PREDICT, {"instances": images.tolist()})
    status2, named = server.post(PREDICT, {"instances": [{"images": i.tolist()} for i in images]})
    assert status == status2 == 200
    assert plain == named


def _image_body(layout: str, images: np.ndarray) -> bytes:
    """The same images as JSON laid out the ways real clients and people write it."""
    if layout == "compact":
        return json.dumps({"instances": images.tolist()}, separators=(",", ":")).encode()
    if layout == "indented":
        return json.dumps({"instances": images.tolist()}, indent=2).encode()
    if layout == "tabs and newlines":
        text = json.dumps({"instances": images.tolist()})
        return ("\r\n\t" + text.replace(", ", ",\n\t ").replace("[", "[\t") + "\n").encode()
    return json.dumps({"inputs": images.tolist()}).encode()  # "columnar"


@pytest.mark.parametrize("layout", ["compact", "indented", "tabs and newlines", "columnar"])
def test_any_json_layout_matches_in_process_call(server, model_base, layout):
    # Plain integer bodies take a shortcut past json.loads (fastpath.py); whatever the
    # whitespace, the answer must be the one the general parser gives.
    images = random_images(7, seed=6)
    images[0, 0, 0, 0] = 0  # a lone 0 next to numbers with several digits
    expected = reference(model_base / "1", images)
    status, body = server.post(PREDICT, _image_body(layout, images))
    assert status == 200, body
    if layout == "columnar":
        probabilities = body["outputs"]["probabilities"]
    else:
        probabilities = [p["probabilities"] for p in body["predictions"]]
    np.testing.assert_array_equal(np.array(probabilities, np.float32), expected["probabilities"])


# -- bad input ----------------------------------------------------------------------------

def _with_pixel(text: str) -> bytes:
    """One black image with pixel [0, 0] = 12, its "[12]" replaced by `text`: invalid JSON
    that only differs from a valid body inside one number."""
    image = np.zeros((1, 28, 28, 1), np.uint8)
    image[0, 0, 0, 0] = 12
    return json.dumps({"instances": image.tolist()}).replace("[12]", text, 1).encode()


ONE = random_images(1).tolist()

BAD_REQUESTS = {
    "malformed json": (PREDICT, b'{"instances": [1, 2', 400, "Malformed JSON"),
    "not an object": (PREDICT, b"[1, 2, 3]", 400, "JSON object"),
    "empty body": (PREDICT, b"", 400, "Malformed JSON"),
    "not UTF-8": (PREDICT, b"\xff\xfe{}", 400, "Malformed JSON"),
    "nested too deeply": (PREDICT, b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                          400, "nested too deeply"),
    "both formats": (PREDICT, {"instances": ONE, "inputs": ONE}, 400, "both"),
    "neither format": (PREDICT, {"signature_name": "serving_default"}, 400, "neither"),
    # The request's shape goes to the graph, as in TF Serving: this one it refuses.
    "wrong shape": (PREDICT, {"instances": [[[1, 2, 3]]]}, 400, "reshape"),
    "wrong dtype (floats)": (PREDICT, {"instances": (np.array(ONE) / 2).tolist()}, 400,
                             "non-integer"),
    "wrong dtype (booleans)": (PREDICT, {"instances": (np.array(ONE) > 9).tolist()}, 400,
                               "booleans"),
    "value above 255": (PREDICT, {"instances": (np.array(ONE) + 256).tolist()}, 400, "outside [0, 255]"),
    "negative value": (PREDICT, {"instances": (np.array(ONE) - 256).tolist()}, 400, "outside [0, 255]"),
    "NaN": (PREDICT, b'{"instances": [[[[NaN]]]]}', 400, "NaN"),
    "two numbers without a comma": (PREDICT, _with_pixel("[1 2]"), 400, "Malformed JSON"),
    "leading zero": (PREDICT, _with_pixel("[012]"), 400, "Malformed JSON"),
    "value above 255 in a plain body": (PREDICT, _with_pixel("[256]"), 400, "outside [0, 255]"),
    "strings": (PREDICT, {"instances": np.array(ONE).astype(str).tolist()}, 400, "strings"),
    "null": (PREDICT, {"instances": [[[[None]]]]}, 400, "not numbers"),
    "ragged": (PREDICT, {"instances": [ONE[0], ONE[0][:3]]}, 400, "rectangular"),
    "empty list": (PREDICT, {"instances": []}, 400, "No values in 'instances'"),
    "instances not a list": (PREDICT, {"instances": 3}, 400, "must be a list"),
    "unknown input name": (PREDICT, {"inputs": {"pixels": ONE}}, 400, "unknown input(s) pixels"),
    "too many instances": (PREDICT, {"instances": [0] * (MAX_INSTANCES + 1)}, 400,
                           f"at most {MAX_INSTANCES}"),
    "oversized body": (PREDICT, b'{"instances": [' + b"0," * MAX_BODY_BYTES + b"0]}", 413,
                       "larger than"),
    "unknown model": ("/v1/models/fashion:predict", {"instances": ONE}, 404, "fashion"),
    "unknown version": ("/v1/models/mnist/versions/42:predict", {"instances": ONE}, 404,
                        "Version 42"),
    "unknown signature": (PREDICT, {"signature_name": "train", "instances": ONE}, 400,
                          "Serving signature key \"train\" not found."),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_clear_4xx(server, case):
    path, body, want_status, want_text = BAD_REQUESTS[case]
    status, answer = server.post(path, body)
    assert status == want_status, answer
    assert set(answer) == {"error"} and want_text in answer["error"], answer


@pytest.mark.parametrize("path", ["/v1/models/fashion", "/v1/models/mnist/versions/42",
                                  "/v1/models/mnist/versions/42/metadata", "/nothing"])
def test_unknown_get_paths_are_json_404(server, path):
    status, answer = server.get(path)
    assert status == 404 and set(answer) == {"error"}


def test_other_v1_paths_are_malformed_requests(server):
    # TF Serving answers anything under /v1/ it has no route for INVALID_ARGUMENT (400).
    status, answer = server.get("/v1/nothing")
    assert status == 400 and "Malformed request" in answer["error"]


def test_server_still_answers_after_bad_requests(server, model_base):
    for case in BAD_REQUESTS:  # whatever order pytest chose, run the battery once more
        path, body, want_status, _ = BAD_REQUESTS[case]
        assert server.post(path, body)[0] == want_status
    images = random_images(5, seed=3)
    status, body = server.post(PREDICT, {"instances": images.tolist()})
    assert status == 200
    assert [p["classes"] for p in body["predictions"]] == \
        reference(model_base / "1", images)["classes"].tolist()
    assert server.process.poll() is None
    assert "500" not in server.stats()["responses"]


# -- batching -----------------------------------------------------------------------------

def _concurrent_predictions(server: Server, images: np.ndarray) -> list[list[float]]:
    """One single-image request per thread, all released at once."""
    barrier = threading.Barrier(len(images))
    results: list = [None] * len(images)

    def send(i):
        barrier.wait()
        results[i] = server.post(PREDICT, {"instances": images[i:i + 1].tolist()})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(status == 200 for status, _ in results), results
    return [body["predictions"][0]["probabilities"] for _, body in results]


def test_concurrent_requests_are_merged_into_fewer_model_calls(server, model_base):
    images = random_images(32, seed=4)
    expected = reference(model_base / "1", images)["probabilities"]
    before = server.stats()
    got = []
    for _ in range(3):
        got = _concurrent_predictions(server, images)
    after = server.stats()
    requests = after["requests"] - before["requests"]
    calls = after["model_calls"] - before["model_calls"]
    assert requests == 96
    assert calls < requests, (before, after)
    assert after["max_batch_size"] > 1
    # Each client gets its own rows back, whatever batch it rode in (batch size may change
    # the last float bits, not more).
    np.testing.assert_allclose(np.array(got, np.float32), expected, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def unbatched_server(tmp_path_factory):
    """A server with batching off, started on a base path that also holds junk: an empty
    higher version, a broken higher version, and a temp dir of an export in progress."""
    base = tmp_path_factory.mktemp("junk") / "mnist"
    export_version(base, 1)
    (base / "9").mkdir()  # no saved_model.pb: an incomplete copy, a version that fails to load
    (base / "5").mkdir()
    (base / "5" / "saved_model.pb").write_bytes(b"not a protobuf")  # fails to load
    (base / ".tmp-7").mkdir()
    (base / "README").write_text("not a version")
    log = tmp_path_factory.mktemp("logs") / "unbatched.log"
    server = start_server(base, log, "--no-batching")
    yield server
    stop_server(server)


def test_no_batching_calls_the_model_once_per_request(unbatched_server):
    images = random_images(16, seed=5)
    before = unbatched_server.stats()
    got = _concurrent_predictions(unbatched_server, images)
    after = unbatched_server.stats()
    assert after["model_calls"] - before["model_calls"] == 16
    assert after["max_batch_size"] == 1
    # This server runs with the default (server-sized) TensorFlow thread pools.
    assert re.search(r"TensorFlow intra-op \d+, inter-op \d+ threads", unbatched_server.log())
    np.testing.assert_allclose(np.sum(got, axis=1), 1, rtol=1e-5)


def test_incomplete_and_broken_versions_do_not_stop_serving(unbatched_server):
    status, body = unbatched_server.get("/v1/models/mnist")
    assert status == 200
    states = {row["version"]: row for row in body["model_version_status"]}
    # An integer-named folder is a version (the export's rule too); .tmp-7 and README are not.
    assert set(states) == {"1", "5", "9"}
    assert states["1"]["state"] == "AVAILABLE"
    for broken in ("5", "9"):  # a bad SavedModel, an empty folder: reported, not fatal
        assert states[broken]["state"] == "END" and states[broken]["status"]["error_code"] != "OK"
        assert states[broken]["status"]["error_message"]
    assert unbatched_server.get("/v1/models/mnist/metadata")[1]["model_spec"]["version"] == "1"
    assert unbatched_server.post(PREDICT, {"instances": ONE})[0] == 200
    assert "failed to load mnist version 5" in unbatched_server.log()


# -- hot reload ---------------------------------------------------------------------------

class LoadLoop:
    """Clients sending single-image requests over keep-alive connections until stopped."""

    def __init__(self, server: Server, image: np.ndarray, clients: int = 4):
        self.server = server
        self.body = json.dumps({"instances": image[None].tolist()}).encode()
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list = []
        self.last: list[float] | None = None
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self):
        connection = http.client.HTTPConnection(self.server.host, self.server.port, timeout=30)
        while not self.stop.is_set():
            try:
                connection.request("POST", PREDICT, body=self.body)
                response = connection.getresponse()
                body = json.loads(response.read())
                if response.status != 200:
                    self.failures.append((response.status, body))
                else:
                    self.ok += 1
                    self.last = body["predictions"][0]["probabilities"]
            except Exception as exc:  # a dropped connection is a failure too
                self.failures.append(repr(exc))
                connection.close()
                connection = http.client.HTTPConnection(self.server.host, self.server.port)
        connection.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)


def _wait_for(predicate, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_new_version_is_picked_up_without_failing_requests(tmp_path):
    base = tmp_path / "mnist"
    export_version(base, 1, seed=0)
    server = start_server(base, tmp_path / "server.log")
    image = random_images(1, seed=6)[0]
    try:
        with LoadLoop(server, image) as load:
            assert _wait_for(lambda: load.ok >= 20)
            export_version(base, 2, seed=1)  # different weights
            assert _wait_for(lambda: server.get("/v1/models/mnist")[1]["model_version_status"][0]
                             == {"version": "2", "state": "AVAILABLE",
                                 "status": {"error_code": "OK", "error_message": ""}})
            served_after_swap = load.ok
            assert _wait_for(lambda: load.ok >= served_after_swap + 20)
        assert load.failures == []
        expected = reference(base / "2", image[None])["probabilities"][0]
        np.testing.assert_allclose(load.last, expected, rtol=1e-5, atol=1e-7)
        states = {r["version"]: r["state"] for r in server.get("/v1/models/mnist")[1]["model_version_status"]}
        assert states == {"2": "AVAILABLE", "1": "END"}
        assert server.post("/v1/models/mnist/versions/1:predict", {"instances": ONE})[0] == 404
        log = server.log()
        assert "loaded mnist version 2" in log and "unloaded mnist version 1" in log
    finally:
        stop_server(server)


# -- command lines ------------------------------------------------------------------------

def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=_env(), text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("layout", ["missing", "empty"])
def test_serve_reports_setup_mistakes_without_traceback(tmp_path, layout):
    base = tmp_path / "mnist"
    if layout == "empty":
        (base / ".tmp-1").mkdir(parents=True)
    result = _run("tfpipeline.serve", "--model-name", "mnist", "--model-base-path", str(base))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and str(base) in result.stderr


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    gray = random_images(2, seed=7)
    paths = []
    for i, pixels in enumerate(gray):
        path = folder / f"digit{i}.png"
        Image.fromarray(pixels[:, :, 0]).save(path)
        paths.append(path)
    color = np.random.default_rng(8).integers(0, 256, (56, 40, 3), dtype=np.uint8)
    Image.fromarray(color).save(folder / "photo.jpg")  # converted to gray and resized
    return [*paths, folder / "photo.jpg"]


def _parse_predict_output(stdout: str) -> list[tuple[str, int, float]]:
    rows = re.findall(r"^(.+): class (\d+) \(probability ([0-9.]+)\)$", stdout, re.M)
    return [(Path(p).name, int(c), float(q)) for p, c, q in rows]


def test_predict_command_through_server_and_locally_agree(server, model_base, image_files):
    via_server = _run("tfpipeline.predict", *map(str, image_files), "--server", server.url)
    assert via_server.returncode == 0, via_server.stderr
    local = _run("tfpipeline.predict", *map(str, image_files), "--model-dir", str(model_base))
    assert local.returncode == 0, local.stderr
    rows = _parse_predict_output(via_server.stdout)
    assert [name for name, _, _ in rows] == ["digit0.png", "digit1.png", "photo.jpg"]
    assert rows == _parse_predict_output(local.stdout)
    gray = random_images(2, seed=7)
    expected = reference(model_base / "1", gray)
    for (_, cls, prob), want_cls, want_probs in zip(rows, expected["classes"],
                                                     expected["probabilities"]):
        assert cls == want_cls and prob == pytest.approx(want_probs[want_cls], abs=1e-4)


def test_predict_command_reports_bad_image(tmp_path, server):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    # The file's bytes go to serving_bytes, so the server's model is what refuses them.
    result = _run("tfpipeline.predict", str(bad), "--server", server.url)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    stderr = " ".join(result.stderr.split())  # one wrapped paragraph
    assert "Server answered 400" in stderr and "Not an image" in stderr
    missing = _run("tfpipeline.predict", str(tmp_path / "missing.png"), "--server", server.url)
    assert missing.returncode == 2 and "Cannot read image" in " ".join(missing.stderr.split())
