"""What the serving tests share: tiny SavedModels written by the project's own exporter, and
a real `python -m tfpipeline.serve` process on ephemeral 127.0.0.1 ports (REST and gRPC)."""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tfpipeline.export import write_savedmodel
from tfpipeline.inputs.image import ImageInput

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (28, 28, 1)


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def tiny_model(seed: int = 0, classes: int = 10) -> keras.Model:
    """An untrained functional Keras model on raw uint8 pixels (Rescaling, Dense)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=SHAPE, dtype="uint8", name="images")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(classes)(x))


def export_version(base: Path, version: int, seed: int = 0, warmup_images=None) -> Path:
    """Write a version with tfpipeline.export.write_savedmodel into a temp dir, then rename
    it into place (a polling server never sees it half-written). With `warmup_images`, a
    warm-up file is written too, as export_verified does."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{version}"
    write_savedmodel(tiny_model(seed), ImageInput.of(SHAPE), tmp)
    if warmup_images is not None:
        from tfpipeline.export.warmup import write_warmup_requests

        write_warmup_requests(tmp, ImageInput.of(SHAPE).warmup_requests(warmup_images))
    final = base / str(version)
    os.rename(tmp, final)
    return final


def random_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *SHAPE), dtype=np.uint8)


@dataclass
class Server:
    process: subprocess.Popen
    host: str
    port: int  # REST
    grpc_port: int
    log_path: Path

    def request(self, method: str, path: str, body=None) -> tuple[int, dict]:
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request(method, path, body=body,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def get_text(self, path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, dict]:
        return self.request("GET", path)

    def post(self, path: str, body) -> tuple[int, dict]:
        return self.request("POST", path, body)

    def stats(self) -> dict:
        return self.get("/monitoring/stats")[1]

    def log(self) -> str:
        return self.log_path.read_text()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"


def start_server(base: Path | None, log_path: Path, *flags: str, model_name: str = "mnist",
                 expect_failure: bool = False) -> Server:
    """Start the server on ports 0 and learn both ports from the lines it prints.
    `base` None: the flags name the models (e.g. --model_config_file)."""
    command = [sys.executable, "-m", "tfpipeline.serve", "--port=0", "--rest_api_port", "0",
               "--file_system_poll_wait_seconds=0.2"]
    if base is not None:
        command += ["--model_name", model_name, "--model_base_path", str(base)]
    command += list(flags)
    log_file = open(log_path, "w")
    process = subprocess.Popen(command, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                               stderr=log_file, stdin=subprocess.DEVNULL, text=True)
    log_file.close()
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 120
    grpc_port = None
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = process.stdout.readline()
            match = re.search(r"Serving gRPC at [0-9.]+:(\d+)", line)
            if match:
                # The REST line follows at once, and may already sit in the reader's buffer,
                # where the selector cannot see it.
                grpc_port = int(match.group(1))
                line = process.stdout.readline()
            match = re.search(r"Serving .+ at http://([0-9.]+):(\d+)", line)
            if match:
                return Server(process, match.group(1), int(match.group(2)), grpc_port, log_path)
            if not line:
                break
        if process.poll() is not None:
            break
    process.kill()
    process.wait()
    raise AssertionError(f"server did not start:\n{log_path.read_text()}")


def stop_server(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
