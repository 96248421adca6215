"""TensorBoard as a reviewer sees it: the real `tensorboard` program, started on an ephemeral
127.0.0.1 port against the logs of two quick runs (a CNN through the command line with
profiling and per-epoch images, an MLP in-process without histograms), queried through the
same HTTP data API its web pages use."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli
from tfpipeline import cli
from tfpipeline.distribute import free_ports
from tfpipeline.errors import UserError
from tfpipeline.pipeline import PipelineConfig, run

CNN_RUN = "cnn-profiled"
MLP_RUN = "mlp-plain"


@dataclass
class Runs:
    logdir: Path
    cnn_cli: subprocess.CompletedProcess
    cnn_metadata: dict
    mlp_metadata: dict
    mlp_export: Path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, manual_dir, data_dir) -> Runs:
    cwd = tmp_path_factory.mktemp("tb")
    env = {"TFPIPELINE_MANUAL_DIR": str(manual_dir), "TFDS_DATA_DIR": data_dir}
    cnn = run_cli("--quick", "--run-name", CNN_RUN, "--profile-batches", "2,4", "--image-freq", "1",
                  "--clipnorm", "1.0", cwd=cwd, env=env)
    assert cnn.returncode == 0, cnn.stderr[-3000:]
    mlp = run(PipelineConfig(
        model="mlp", quick=True, run_name=MLP_RUN, histogram_freq=0, verbose=0, force_publish=True,
        data_dir=data_dir, manual_dir=str(manual_dir),
        logdir=str(cwd / "runs"), export_dir=str(cwd / "exported"), work_dir=str(cwd / "work"),
    ))
    cnn_metadata = json.loads((cwd / "exported/mnist/1/metadata.json").read_text())
    return Runs(cwd / "runs", cnn, cnn_metadata, mlp.metadata, mlp.export_path)


def _tensorboard_command() -> list[str]:
    script = Path(sys.executable).with_name("tensorboard")
    return [str(script)] if script.exists() else [shutil.which("tensorboard") or "tensorboard"]


class Board:
    """A running `tensorboard` and a tiny client for its data API."""

    def __init__(self, logdir: Path, log_path: Path):
        self.port = free_ports(1)[0]  # TensorBoard has no --port 0
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [*_tensorboard_command(), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(self.port),
             "--reload_interval", "2"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        self.log_path = log_path

    def request(self, path: str, params: dict | None = None, body: dict | None = None) -> bytes:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                payload = response.read()
                # The profile plugin compresses its answers whether or not the client asked.
                if response.headers.get("Content-Encoding") == "gzip":
                    payload = gzip.decompress(payload)
                return payload
        except urllib.error.HTTPError as exc:  # keep TensorBoard's explanation in the failure
            raise AssertionError(f"{url} answered {exc.code}: {exc.read()[:1000]!r}") from None

    def json(self, path: str, params: dict | None = None, body: dict | None = None):
        return json.loads(self.request(path, params, body))

    def wait_until(self, check, what: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"tensorboard exited ({self.process.returncode}):\n{self.log_path.read_text()[-3000:]}")
            try:
                result = check()
                if result:
                    return result
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError) as exc:
                last = exc
            time.sleep(0.5)
        pytest.fail(f"tensorboard never served {what} (last error: {last}):\n{self.log_path.read_text()[-3000:]}")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def board(runs, tmp_path_factory):
    board = Board(runs.logdir, tmp_path_factory.mktemp("tblog") / "tensorboard.log")
    try:
        expected = {f"mnist/{name}{sub}" for name in (CNN_RUN, MLP_RUN)
                    for sub in ("", "/train", "/validation", "/test")}
        board.wait_until(lambda: expected <= set(board.json("/data/runs")), "both runs")
        # Runs can be listed before all their event files are read: wait for the run summaries,
        # the last thing each run writes.
        def summaries_read():
            tags = board.json("/data/plugin/text/tags")
            return all("run_summary" in tags.get(f"mnist/{name}", ()) for name in (CNN_RUN, MLP_RUN))

        board.wait_until(summaries_read, "both run summaries")
        yield board
    finally:
        board.stop()


# The bodies the HParams page posts (GetExperimentRequest, ListSessionGroupsRequest as JSON).
EXPERIMENT_QUERY = {"experimentName": "", "includeMetrics": True}
SESSION_GROUPS_QUERY = {
    **EXPERIMENT_QUERY,
    "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
    "startIndex": 0,
    "sliceSize": 100,
}


@pytest.mark.slow
def test_scalars_for_train_and_validation_and_final_metrics(runs, board):
    tags = board.json("/data/plugin/scalars/tags")
    for name, metadata in ((CNN_RUN, runs.cnn_metadata), (MLP_RUN, runs.mlp_metadata)):
        assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= set(tags[f"mnist/{name}/train"])
        assert {"epoch_loss", "epoch_accuracy"} <= set(tags[f"mnist/{name}/validation"])
        assert {"epoch_loss", "epoch_accuracy"} <= set(tags[f"mnist/{name}/test"])
        series = board.json("/data/plugin/scalars/scalars", {"run": f"mnist/{name}/test", "tag": "epoch_accuracy"})
        # Rows are [wall time, step, value]; the value is the exported model's test accuracy,
        # at the last epoch's step so it lines up with the train and validation curves.
        assert series[-1][1] == 0 and series[-1][2] == pytest.approx(metadata["metrics"]["test"]["accuracy"], abs=1e-6)
    rate = board.json("/data/plugin/scalars/scalars", {"run": f"mnist/{CNN_RUN}/train", "tag": "epoch_learning_rate"})
    assert len(rate) == 1 and rate[0][2] >= 0


@pytest.mark.slow
def test_graph_of_each_model(board):
    info = board.json("/data/plugin/graphs/info")
    for name, layer in ((CNN_RUN, "Conv2D"), (MLP_RUN, "Dense")):
        run_info = info[f"mnist/{name}/train"]
        assert run_info["tags"]["keras"]["conceptual_graph"], run_info
        graph = board.request("/data/plugin/graphs/graph",
                              {"run": f"mnist/{name}/train", "tag": "keras", "conceptual": "true"}).decode()
        assert graph.count("node {") >= 4 and layer in graph, graph[:2000]
        # The op graph of the forward pass, which the Graphs page opens on.
        assert run_info["run_graph"], run_info
        ops = board.request("/data/plugin/graphs/graph", {"run": f"mnist/{name}/train"}).decode()
        assert 'name: "logits' in ops and "MatMul" in ops, ops[:2000]


@pytest.mark.slow
def test_histograms_follow_histogram_freq(board):
    tags = board.json("/data/plugin/histograms/tags")
    kernels = [t for t in tags[f"mnist/{CNN_RUN}/train"] if t.endswith("kernel/histogram")]
    assert kernels, tags
    buckets = board.json("/data/plugin/histograms/histograms", {"run": f"mnist/{CNN_RUN}/train", "tag": kernels[0]})
    assert buckets and buckets[0][2], buckets  # [wall time, step, [[left, right, count], ...]]
    # The MLP ran with histogram_freq=0: no histograms at all.
    assert f"mnist/{MLP_RUN}/train" not in tags


def _image(board: Board, run: str, tag: str) -> Image.Image:
    samples = board.json("/data/plugin/images/images", {"run": run, "tag": tag, "sample": 0})
    png = board.request("/data/plugin/images/individualImage?" + samples[-1]["query"])
    return Image.open(io.BytesIO(png)).convert("RGB")


def _has_red(image: Image.Image) -> bool:
    pixels = np.asarray(image).astype(int)
    return bool(((pixels[..., 0] > 150) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)).any())


@pytest.mark.slow
def test_prediction_images_and_confusion_matrix(runs, board):
    tags = board.json("/data/plugin/images/tags")
    cnn_test = set(tags[f"mnist/{CNN_RUN}/test"])
    assert {"predictions", "confusion_matrix"} <= cnn_test
    assert {"predictions", "confusion_matrix"} <= set(tags[f"mnist/{CNN_RUN}/validation"])  # --image-freq 1
    assert {"predictions", "confusion_matrix"} <= set(tags[f"mnist/{MLP_RUN}/test"])
    assert f"mnist/{MLP_RUN}/validation" not in tags  # image_freq 0: the test images at the end only

    grid = _image(board, f"mnist/{CNN_RUN}/test", "predictions")
    assert grid.width >= 8 * 84 and grid.height >= 5 * 84  # 40 digits at three times their size
    # A one-epoch model on 3,000 images makes mistakes; they are drawn in red.
    assert runs.cnn_metadata["metrics"]["test"]["accuracy"] < 1
    assert "mistakes" in cnn_test and _has_red(_image(board, f"mnist/{CNN_RUN}/test", "mistakes"))
    matrix = _image(board, f"mnist/{CNN_RUN}/test", "confusion_matrix")
    assert matrix.width > 10 * 30 and matrix.height > 10 * 30


@pytest.mark.slow
def test_attribution_images_for_the_sample_and_the_mistakes(runs, board):
    tags = board.json("/data/plugin/images/tags")
    for run_name in (CNN_RUN, MLP_RUN):
        assert {"attributions", "attributions_mistakes"} <= set(tags[f"mnist/{run_name}/test"]), tags
    sample = _image(board, f"mnist/{CNN_RUN}/test", "attributions")
    assert sample.width >= 4 * 2 * 112 and sample.height >= 4 * 112  # 16 pairs of 4x digits, 4 per row
    # Attributions are drawn in red (raised the class) and blue (lowered it).
    pixels = np.asarray(sample.convert("RGB")).reshape(-1, 3).astype(int)
    assert ((pixels[:, 0] - pixels[:, 2]) > 100).any() and ((pixels[:, 2] - pixels[:, 0]) > 100).any()


@pytest.mark.slow
def test_run_summary_text(runs, board):
    tags = board.json("/data/plugin/text/tags")
    assert "run_summary" in tags[f"mnist/{CNN_RUN}"] and "run_summary" in tags[f"mnist/{MLP_RUN}"]
    html = board.json("/data/plugin/text/text", {"run": f"mnist/{CNN_RUN}", "tag": "run_summary"})[-1]["text"]
    assert f"python -m pipelines.mnist --quick --run-name {CNN_RUN} --profile-batches 2,4 --image-freq 1" in html
    assert f"{runs.cnn_metadata['metrics']['test']['accuracy']:.4f}" in html
    assert "exported/mnist/1" in html
    for package in ("tensorflow", "keras", "tensorboard", "python"):
        assert f"<td>{package}</td>" in html
    mlp_html = board.json("/data/plugin/text/text", {"run": f"mnist/{MLP_RUN}", "tag": "run_summary"})[-1]["text"]
    assert str(runs.mlp_export.resolve()) in mlp_html


@pytest.mark.slow
def test_hparams_compare_runs_of_different_families(runs, board):
    experiment = board.json("/data/plugin/hparams/experiment", body=EXPERIMENT_QUERY)
    infos = {info["name"]: info for info in experiment["hparamInfos"]}
    assert sorted(infos["family"]["domainDiscrete"]) == ["cnn", "mlp"] and infos["family"]["differs"]
    assert {"filters", "units", "learning_rate", "batch_size", "dropout", "seed"} <= set(infos)
    metrics = [(m["name"].get("group", ""), m["name"]["tag"]) for m in experiment["metricInfos"]]
    # The columns a tuner trial shares (validation epoch_accuracy) and the runs' final test ones;
    # the HParams page shows the first five metrics until the user picks others.
    assert {("validation", "epoch_accuracy"), ("validation", "epoch_loss"), ("test", "epoch_accuracy"),
            ("test", "epoch_loss")} <= set(metrics)
    assert {("test", "epoch_accuracy"), ("validation", "epoch_accuracy")} <= set(metrics[:5]), metrics

    groups = board.json("/data/plugin/hparams/session_groups", body=SESSION_GROUPS_QUERY)["sessionGroups"]
    rows = {g["name"]: g for g in groups}
    assert set(rows) == {f"mnist/{CNN_RUN}", f"mnist/{MLP_RUN}"}
    cnn, mlp = rows[f"mnist/{CNN_RUN}"], rows[f"mnist/{MLP_RUN}"]
    assert cnn["hparams"]["family"] == "cnn" and mlp["hparams"]["family"] == "mlp"
    assert cnn["hparams"]["filters"] == ",".join(map(str, runs.cnn_metadata["model"]["hyperparameters"]["filters"]))
    assert "filters" not in mlp["hparams"]
    assert mlp["hparams"]["units"] == runs.mlp_metadata["model"]["hyperparameters"]["units"]
    assert cnn["hparams"]["learning_rate"] != mlp["hparams"]["learning_rate"]
    # Optimizer options are columns too (0: off), and metadata.json says the same.
    assert cnn["hparams"]["clipnorm"] == 1.0 and mlp["hparams"]["clipnorm"] == 0.0
    assert runs.cnn_metadata["training"]["optimizer"]["clipnorm"] == 1.0
    for row, metadata in ((cnn, runs.cnn_metadata), (mlp, runs.mlp_metadata)):
        values = {(m["name"].get("group", ""), m["name"]["tag"]): m["value"] for m in row["metricValues"]}
        assert values[("test", "epoch_accuracy")] == pytest.approx(metadata["metrics"]["test"]["accuracy"], abs=1e-6)
        assert values[("test", "epoch_loss")] == pytest.approx(metadata["metrics"]["test"]["loss"], rel=1e-5)
        # One epoch, so Keras's last validation figure is the exported model's.
        assert values[("validation", "epoch_accuracy")] == pytest.approx(
            metadata["metrics"]["validation"]["accuracy"], abs=1e-6)


@pytest.mark.slow
def test_profile_plugin_lists_the_trace(board):
    # Through the profile plugin's own HTTP routes (the ones its page calls).
    profiles = board.wait_until(lambda: board.json("/data/plugin/profile/runs"), "profile runs")
    assert profiles and all(p.startswith(f"mnist/{CNN_RUN}/train/") for p in profiles), profiles
    tools = board.json("/data/plugin/profile/run_tools", {"run": profiles[0]})
    assert "trace_viewer@" in tools or "trace_viewer" in tools, tools
    assert "overview_page" in tools, tools
    host = board.json("/data/plugin/profile/hosts", {"run": profiles[0], "tag": "overview_page"})[0]["hostname"]
    overview = board.request("/data/plugin/profile/data",
                             {"run": profiles[0], "tag": "overview_page", "host": host}).decode()
    # The step markers make the overview page measure step times instead of reporting none.
    assert "No step marker" not in overview and '"steptime_ms_average"' in overview, overview[:2000]


@pytest.mark.parametrize("value, phrase", [("4", "START,END"), ("a,b", "two whole numbers"), ("1,2,3", "START,END")])
def test_malformed_profile_batches_are_explained(value, phrase, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["--profile-batches", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--profile-batches" in err and phrase in err, err


@pytest.mark.parametrize("args, phrase", [
    (["--profile-batches", "0,3"], "--profile-batches needs 1 <= START <= END (batches count from 1)"),
    (["--profile-batches", "5,2"], "--profile-batches needs 1 <= START <= END (batches count from 1)"),
    (["--histogram-freq", "-1"], "--histogram-freq must be 0 or a positive whole number, got -1."),
])
def test_out_of_range_tensorboard_flags_are_explained(args, phrase):
    config = cli.config_from_args(cli.build_parser().parse_args(args))
    with pytest.raises(UserError, match=re.escape(phrase)):
        config.validate()


def test_profile_range_past_the_last_batch_is_a_user_error(tmp_path, manual_dir, data_dir):
    config = PipelineConfig(
        quick=True, profile_batches=(100, 120), data_dir=data_dir, manual_dir=str(manual_dir),
        logdir=str(tmp_path / "runs"), export_dir=str(tmp_path / "exported"), work_dir=str(tmp_path / "work"),
    )
    with pytest.raises(UserError, match=r"--profile-batches 100,120 .*trains \d+ batches"):
        run(config)
