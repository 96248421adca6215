"""Where a run's time went (tfpipeline/report/timing.py) and the day's train rate
(tfpipeline/report/trainrate.py): in metadata.json's `timing`, the printed summary and the
TensorBoard run summary."""

from __future__ import annotations

import functools
import json
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
    assert "train rate      not measured: these wall times do not compare across days" in block
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


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_a_resumed_runs_metadata_says_where_the_time_went(tmp_path, manual_dir, data_dir, monkeypatch):
    """A quick two-model run killed in its second member, then run again: the second run's
    metadata.json times each stage and says the first member was not trained again."""
    from tfpipeline import cli, pipeline
    from tfpipeline.pipeline import PipelineConfig
    from tfpipeline.report import tensorboard

    monkeypatch.setenv(trainrate.ENV_TRAIN_RATE, "1")
    monkeypatch.setattr(trainrate, "measure", functools.partial(trainrate.measure, steps=3, repeats=1, warmup=1))
    config = PipelineConfig(model="mlp", hparams={"units": 32}, quick=True, ensemble=2, histogram_freq=0, verbose=0,
                            data_dir=data_dir, manual_dir=str(manual_dir), export_dir=str(tmp_path / "exported"),
                            logdir=str(tmp_path / "runs"), work_dir=str(tmp_path / "work"))
    fit_member = pipeline._fit_member

    def killed_in_the_second(ctx, job, model, *, member, run_log):
        if member == 1:
            raise Interrupted
        return fit_member(ctx, job, model, member=member, run_log=run_log)

    monkeypatch.setattr(pipeline, "_fit_member", killed_in_the_second)
    with pytest.raises(Interrupted):
        pipeline.run(config)
    monkeypatch.setattr(pipeline, "_fit_member", fit_member)
    result = pipeline.run(config, started=time.time() - 2.0)

    record = json.loads(result.metadata_path.read_text())["timing"]
    stages = record["stages"]
    for name in (timing.STARTUP, "train rate", "data", "train member 2", "evaluate", "export: write SavedModel",
                 "export: reload and verify", "gate", "tensorboard: test summaries"):
        assert name in stages, f"no {name!r} in {stages}"
    assert "train member 1" not in stages and "not trained again" in record["notes"]["train member 1"]
    assert all(seconds >= 0 for seconds in stages.values()) and stages["train member 2"] > 0
    assert sum(stages.values()) <= record["total_s"] + 0.01  # rounding
    assert record["total_s"] >= 2.0 and record["since"] == "the command's start"
    assert record["train_rate"]["images_per_s"] > 0 and record["train_rate"]["model"] == trainrate.MODEL
    markdown = tensorboard.run_summary(config, result.metadata, result.export_path)  # TensorBoard's text
    assert "**Where the time went**" in markdown and "| train member 1 | not run; not trained again" in markdown
    printed = cli.summary(result)
    assert "where the time went" in printed and "train member 2" in printed
    assert f"{record['train_rate']['images_per_s']:,} images/s today" in printed
