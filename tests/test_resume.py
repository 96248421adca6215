"""Exact resume: with --deterministic and the same seed, a run gives the same weights every time,
and a run killed with SIGKILL (at an epoch's end, or in the middle of an epoch) and run again ends
with the weights an uninterrupted run ends with. Real subprocesses of the CLI, real kills."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, exported_metadata, exported_versions, run_cli

# The default CNN (its shift augmentation switches on at epoch 2), on --quick's 3,000 images.
COMMAND = ("--quick", "--no-tune", "--deterministic", "--epochs", "4", "--histogram-freq", "0")


def _digest(proc: subprocess.CompletedProcess | str) -> str:
    text = proc if isinstance(proc, str) else proc.stdout
    found = re.findall(r"Final weights sha256 ([0-9a-f]{64})", text)
    assert len(found) == 1, text[-3000:]
    return found[0]


def _env(manual_dir, data_dir) -> dict:
    return {"TFPIPELINE_MANUAL_DIR": str(manual_dir), "TFDS_DATA_DIR": data_dir}


def _killed(cwd: Path, env: dict, *, when, command=COMMAND) -> tuple[int, str]:
    """Start the command, SIGKILL it once `when(backup_epoch, stdout_so_far)` says so, and
    return the epoch its backup held (the epochs it had finished) and its output."""
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.mnist", *command], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if when(_backup_epoch(cwd), "".join(lines)):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                reader.join(timeout=10)
                return _backup_epoch(cwd), "".join(lines)
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    raise AssertionError(f"the run ended before it could be killed: {''.join(lines)[-2000:]}")


def _backup_epoch(cwd: Path) -> int:
    found = list((cwd / "work").glob("*/*/*/train-*/training_metadata.json"))  # any dataset: test_resume_kinds too
    try:
        return json.loads(found[0].read_text())["epoch"] if found else 0
    except (OSError, ValueError):  # being written
        return -1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, manual_dir, data_dir):
    """Two uninterrupted runs of the command, in two folders: their final weights' digests."""
    digests = []
    for name in ("first", "second"):
        cwd = tmp_path_factory.mktemp(name)
        proc = run_cli(*COMMAND, cwd=cwd, env=_env(manual_dir, data_dir))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert exported_metadata(cwd)["distribution"]["weights_sha256"] == _digest(proc)
        digests.append(_digest(proc))
    return digests


@pytest.mark.slow
def test_two_runs_with_the_same_seed_give_the_same_weights(uninterrupted):
    assert uninterrupted[0] == uninterrupted[1]


@pytest.mark.slow
def test_killed_at_an_epoch_boundary_resumes_to_the_same_weights(uninterrupted, tmp_path, manual_dir, data_dir):
    finished, _ = _killed(tmp_path, _env(manual_dir, data_dir), when=lambda epoch, out: epoch == 2)
    assert finished == 2
    proc = run_cli(*COMMAND, cwd=tmp_path, env=_env(manual_dir, data_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # From epoch 3, or from epoch 2 when the kill fell between the backup and the early-stopping
    # state of epoch 2 (the backup's previous copy is put back: training.resumed_epoch).
    assert re.search(r"Resuming training from epoch [23]/4", proc.stdout), proc.stdout[-3000:]
    assert _digest(proc) == uninterrupted[0]


@pytest.mark.slow
def test_killed_in_the_middle_of_an_epoch_resumes_to_the_same_weights(uninterrupted, tmp_path, manual_dir,
                                                                      data_dir):
    # Epoch 3 has begun (its first batches are training) and is not finished.
    finished, _ = _killed(tmp_path, _env(manual_dir, data_dir),
                       when=lambda epoch, out: epoch == 2 and re.search(r"Epoch 3/4\n", out) is not None)
    assert finished == 2
    assert exported_versions(tmp_path) == [] and list((tmp_path / "work").glob("mnist/*/*/train-*"))
    proc = run_cli(*COMMAND, cwd=tmp_path, env=_env(manual_dir, data_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming interrupted run" in proc.stdout and "Resuming training from epoch 3/4" in proc.stdout
    assert "Epoch 2/4" not in proc.stdout  # only the epochs left ran after the restart
    assert _digest(proc) == uninterrupted[0]
    # One version, not half-written; the backup is gone; the schedule's step count resumed too.
    assert exported_versions(tmp_path) == ["1"]
    meta = exported_metadata(tmp_path)["training"]
    assert meta["epochs_run"] == 4 and meta["resumed"] is True and meta["steps_run"] == 4 * meta["steps_per_epoch"]
    assert not list((tmp_path / "work").glob("mnist/*/*/train-*"))


TUNED = ("--quick", "--tune", "--ensemble", "2", "--deterministic", "--histogram-freq", "0")


@pytest.fixture(scope="module")
def tuned_whole(tmp_path_factory, manual_dir, data_dir) -> tuple[Path, str]:
    """An uninterrupted tuned run (a Hyperband search of 2 trials of 2 epochs, then 2 members):
    its folder and its final weights' digest."""
    cwd = tmp_path_factory.mktemp("tuned-whole")
    whole = run_cli(*TUNED, cwd=cwd, env=_env(manual_dir, data_dir))
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "Search finished: 2 of 2 trials completed" in whole.stdout, whole.stdout[-3000:]
    return cwd, _digest(whole)


@pytest.mark.slow
def test_a_tuned_run_exports_the_average_of_its_members(tuned_whole):
    cwd, _ = tuned_whole
    metadata = exported_metadata(cwd)
    model = metadata["model"]
    assert model["members"] == 2 and [m["seed"] for m in model["ensemble"]] == [42, 43]
    alone = [m["test_accuracy"] for m in model["ensemble"]]
    assert alone[0] != alone[1] and all(0.5 < a < 1 for a in alone)  # two different, trained models
    # The export (verified against the Keras model when it was written) serves the average.
    assert metadata["export"]["verified_test_accuracy"] == metadata["metrics"]["test"]["accuracy"] > 0.5
    assert (cwd / metadata["run"]["logdir"] / "member1" / "train").is_dir()  # the second member's own curves
    assert not list((cwd / "work").rglob("member*.weights.h5"))  # kept only until the run ends


@pytest.mark.slow
def test_a_tuned_run_killed_in_the_search_then_in_a_member_resumes_to_the_same_weights(tuned_whole, tmp_path,
                                                                                       manual_dir, data_dir):
    env = _env(manual_dir, data_dir)
    # In the second epoch of the second trial: the first trial is finished, the second has a
    # best-epoch checkpoint of its first epoch and is not finished.
    _killed(tmp_path, env, command=TUNED,
            when=lambda epoch, out: "Epoch 2/2\n" in out.partition("Running Trial #2\n")[2])
    # Run again, and killed again while it trains the second member. The finished trial is
    # kept; the unfinished one runs again from its start, as the same trial.
    _, out = _killed(tmp_path, env, command=TUNED, when=lambda epoch, out: "Member 2 of 2:" in out)
    assert "Resuming the search: 1 finished trial kept (0000); unfinished ones run again." in out, out[-3000:]
    assert "Search: Running Trial #1\n" not in out and "Search finished: 2 of 2 trials" in out
    rerun = run_cli(*TUNED, cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Member 1 of 2: trained before this run was interrupted; loaded" in rerun.stdout
    assert "Running Trial" not in rerun.stdout
    assert _digest(rerun) == tuned_whole[1]


def _batches(train, count: int) -> list:
    return [images.numpy() for images, _ in train.take(count)]


def test_a_trials_data_depends_on_its_seed_and_epoch_only(tiny_images):
    import keras
    import numpy as np
    import tensorflow as tf

    from tfpipeline.data.augmentation import Augmentation
    from tfpipeline.tuning.hypermodel import TrialData

    keras.utils.set_random_seed(0)  # --seed 0: TF refuses a tensor op seed beside a global seed of 0
    images, labels = tiny_images
    source = tf.data.Dataset.from_tensor_slices((images, labels))
    shift = Augmentation(keras.layers.RandomTranslation(0.2, 0.2, seed=3), start_epoch=1)
    data = TrialData(source, source, seed=3)
    train, steps = data.trial_train(64, first_epoch=0, end_epoch=2, per_batch=shift.per_batch(3))
    alone = _batches(train, 2 * steps)
    # Another trial read three epochs of the same data first: this one's batches are the same.
    other, _ = data.trial_train(128, first_epoch=0, end_epoch=3, per_batch=shift.per_batch(3))
    _batches(other, 3 * 4)
    again, _ = data.trial_train(64, first_epoch=0, end_epoch=2, per_batch=shift.per_batch(3))
    for got, want in zip(_batches(again, 2 * steps), alone, strict=True):
        np.testing.assert_array_equal(got, want)
    # Resumed at epoch 1 (a Hyperband round continuing its parent, a restarted run): epoch 1's
    # batches, shifted as in the uninterrupted stream.
    resumed, _ = data.trial_train(64, first_epoch=1, end_epoch=2, per_batch=shift.per_batch(3))
    for got, want in zip(_batches(resumed, steps), alone[steps:], strict=True):
        np.testing.assert_array_equal(got, want)
    # Epoch 0 is as it is, epoch 1 shifted; and another epoch is another order.
    assert not np.array_equal(alone[0], alone[steps])
    assert sorted(map(bytes, np.concatenate(alone[:steps]))) == sorted(map(bytes, images))


def test_a_backup_ahead_of_the_early_stopping_state_is_rolled_back(tmp_path):
    from tfpipeline import training

    assert training.resumed_epoch(tmp_path) == 0
    (tmp_path / "training_metadata.json").write_text('{"epoch": 3, "batch": 0}')
    (tmp_path / "training_metadata.json.bkp").write_text('{"epoch": 2, "batch": 0}')
    (tmp_path / "latest.weights.h5").write_bytes(b"epoch 3")
    (tmp_path / "latest.weights.h5.bkp").write_bytes(b"epoch 2")
    (tmp_path / "early_stopping.json").write_text('{"epoch": 3, "wait": 0, "best": 0.5, "best_epoch": 2}')
    assert training.resumed_epoch(tmp_path) == 3 and (tmp_path / "latest.weights.h5").read_bytes() == b"epoch 3"
    # Killed after the backup of epoch 3, before the early-stopping state: back to epoch 2 for both.
    (tmp_path / "early_stopping.json").write_text('{"epoch": 2, "wait": 0, "best": 0.5, "best_epoch": 1}')
    assert training.resumed_epoch(tmp_path) == 2 and (tmp_path / "latest.weights.h5").read_bytes() == b"epoch 2"
    assert json.loads((tmp_path / "training_metadata.json").read_text())["epoch"] == 2



def _multi_worker_weights(tiny_images, backup, *, kill_at=None):
    """The multi-worker loop (as one worker, under the default strategy) on the tiny images,
    with early stopping on a validation split of shuffled labels (its loss rises as the model
    learns the training labels: the best epoch is an early one, restored at the end). With
    `kill_at`, an exception ends it after that epoch's checkpoint, as a kill would."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tfpipeline import data, models, training
    from tfpipeline.distribute import multiworker

    images, labels = tiny_images
    source = tf.data.Dataset.from_tensor_slices((images[:256], labels[:256]))
    shuffled = np.random.default_rng(1).permutation(labels[256:])
    validation = tf.data.Dataset.from_tensor_slices((images[256:], shuffled)).batch(256)
    settings = training.TrainSettings(epochs=4, batch_size=32, learning_rate=0.01, steps_per_epoch=8,
                                      early_stopping_patience=10, verbose=0, histogram_freq=0)

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == kill_at:
                raise RuntimeError("killed")

    keras.utils.set_random_seed(0)
    model = models.build("mlp", (28, 28, 1), 4)
    stream = lambda first: data.batched(source, batch_size=32, seed=3, training=True, first_epoch=first,  # noqa: E731
                                        end_epoch=settings.epochs)
    multiworker.fit(model, stream, validation, settings, backup_dir=backup, extra_callbacks=[Kill()])
    return model.get_weights()



@pytest.mark.parametrize("before_state", [False, True], ids=["after-its-early-stopping-state", "before-it"])
def test_the_multi_worker_loop_resumes_with_its_early_stopping_state(tiny_images, tmp_path, monkeypatch, capsys,
                                                                     before_state):
    import numpy as np

    from tfpipeline import training

    whole = _multi_worker_weights(tiny_images, tmp_path / "whole")
    if before_state:  # killed between the checkpoint of epoch 2 and early stopping's state of it
        original = training.loop.ResumableEarlyStopping.on_epoch_end

        def killed_before(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("killed")
            original(self, epoch, logs)

        monkeypatch.setattr(training.loop.ResumableEarlyStopping, "on_epoch_end", killed_before)
    with pytest.raises(RuntimeError, match="killed"):
        _multi_worker_weights(tiny_images, tmp_path / "killed", kill_at=None if before_state else 1)
    monkeypatch.undo()
    capsys.readouterr()
    resumed = _multi_worker_weights(tiny_images, tmp_path / "killed")
    # Epoch 2 again when its early-stopping state was never written (the previous checkpoint).
    assert f"Resuming training from epoch {2 if before_state else 3}/4" in capsys.readouterr().out
    for got, want in zip(resumed, whole, strict=True):
        np.testing.assert_array_equal(got, want)


def _oracle(directory):
    import keras_tuner as kt

    from tfpipeline.tuning.oracles import HyperbandOracle

    space = kt.HyperParameters()
    space.Choice("units", [8, 16, 32, 64])
    oracle = HyperbandOracle(objective=kt.Objective("val_accuracy", "max"), max_epochs=2, factor=2, seed=5,
                             hyperparameters=space)
    oracle._set_project_dir(str(directory), "search")
    return oracle


def _reloaded(directory):
    oracle = _oracle(directory)
    oracle.reload()
    return oracle


def test_a_search_killed_inside_the_oracles_writes_reloads_as_if_uninterrupted(tmp_path):
    oracle = _oracle(tmp_path)
    first = oracle.create_trial("tuner0")
    oracle.update_trial(first.trial_id, {"val_accuracy": 0.5})
    first.status = "COMPLETED"
    oracle.end_trial(first)
    # Killed before the tuner's save that follows: the saved state still lists the ended trial
    # as running; it is not run again.
    assert _reloaded(tmp_path)._retry_queue == []
    oracle.save()
    before = (tmp_path / "search" / "oracle.json").read_bytes()
    second = oracle.create_trial("tuner0")
    # Killed between the second trial's file and the oracle's state: the trial is dropped, and
    # the search proposes it again, under the same id.
    (tmp_path / "search" / "oracle.json").write_bytes(before)
    reloaded = _reloaded(tmp_path)
    assert sorted(reloaded.trials) == [first.trial_id]
    again = reloaded.create_trial("tuner0")
    assert (again.trial_id, again.hyperparameters.values) == (second.trial_id, second.hyperparameters.values)
    # Killed after the running trial reported, before it ended: it runs again as a fresh trial
    # (KerasTuner would otherwise keep the old report and skip the new run's).
    reloaded.update_trial(again.trial_id, {"val_accuracy": 0.75})
    rerun = _reloaded(tmp_path).create_trial("tuner0")
    assert rerun.trial_id == second.trial_id and rerun.status == "RUNNING"
    assert not rerun.metrics.exists("val_accuracy") and rerun.score is None
