"""Where a run's time went (tfpipeline/report/timing.py) and the day's train rate
(tfpipeline/report/trainrate.py): in metadata.json's `timing`, the printed summary and the
TensorBoard run summary."""

from __future__ import annotations

import time

import pytest

from tfpipeline.report import timing, trainrate


def test_stages_are_timed_in_order_and_a_skipped_one_says_why():
    times = timing.StageTimes(started=time.time() - 1.5)  # the command began 1.5 s ago
    with times.stage("data"):
        time.sleep(0.02)
    times.skip("train member 1", "not trained again: finished before the run was interrupted")
    with times.stage("train member 2"):
        time.sleep(0.02)
    times.note("train member 2", "resumed at the interrupted run's last saved epoch")
    record = times.to_json()
    assert list(record["stages"]) == [timing.STARTUP, "data", "train member 2"]
    assert record["stages"][timing.STARTUP] == pytest.approx(1.5, abs=0.2)
    assert all(seconds >= 0.02 for name, seconds in record["stages"].items() if name != timing.STARTUP)
    assert sum(record["stages"].values()) <= record["total_s"] and record["other_s"] >= 0
    assert record["since"] == "the command's start" and record["train_rate"] is None
    assert list(record["notes"]) == ["train member 1", "train member 2"]  # "0 s" is never shown for them
    block = timing.summary(record)
    assert "where the time went" in block and "train member 1" in block and "not trained again" in block
    assert "train rate      not measured" in block
    rows = timing.markdown_rows(record)
    assert rows["train member 1"].startswith("not run") and rows["day's train rate"] == "not measured"


def test_without_the_commands_start_the_total_counts_from_the_run():
    record = timing.StageTimes().to_json()
    assert timing.STARTUP not in record["stages"] and record["since"] == "pipeline.run's start"


def test_the_process_start_is_read_from_linux():
    started = timing.process_started()
    assert started is None or time.time() - 86400 < started <= time.time()


def test_the_train_rate_is_a_positive_number_of_images_per_second(monkeypatch):
    rate = trainrate.measure(steps=3, repeats=1, warmup=1)
    assert rate["images_per_s"] > 0 and rate["model"] == "keras.io MNIST convnet, batch 128"
    assert rate["steps"] == "1 warm-up, then the best of 1 x 3" and rate["seconds"] > 0
    monkeypatch.setenv(trainrate.ENV_TRAIN_RATE, "0")
    assert not trainrate.enabled()
    monkeypatch.setenv(trainrate.ENV_TRAIN_RATE, "1")
    assert trainrate.enabled()
