"""The hyperparameter search stage (tfpipeline/tuning.py) as a user meets it: real
`python -m pipelines.mnist` processes on the real MNIST files in quick mode (3,000 training
images), tiny budgets and small models so the whole file stays within a few minutes on two
cores. Covers: a search across families that exports a working SavedModel and shows every
trial in TensorBoard's HParams data; resume after kill -9; a chief and two workers; bad
flags; resident memory across trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras_tuner as kt
import numpy as np
import pytest

from tests.conftest import ROOT, exported_metadata, run_cli
from tests.test_tensorboard import SESSION_GROUPS_QUERY, Board
from tfpipeline import cli, config, models, tuning
from tfpipeline.config import PipelineConfig, SearchSettings
from tfpipeline.distribute import free_ports
from tfpipeline.errors import UserError
from tfpipeline.tuning.oracles import HyperbandOracle

AUTO_RUN = "auto-search"
# Tiny single-family searches: a 32-unit MLP whose width is pinned, the rest searched.
TINY = ["--quick", "--model", "mlp", "--hparam", "units=32", "--histogram-freq", "0", "--tuner", "random",
        "--max-epochs", "1", "--search-fraction", "0.3"]


@pytest.fixture(scope="module")
def env(manual_dir, data_dir):
    return {"TFPIPELINE_MANUAL_DIR": str(manual_dir), "TFDS_DATA_DIR": data_dir}


def _trial_files(cwd: Path) -> dict[str, dict]:
    """The oracle's own record of every trial (KerasTuner's trial.json files)."""
    trials = {}
    for path in cwd.glob("work/mnist/tune-*/*/search/trial_*/trial.json"):
        trial = json.loads(path.read_text())  # written atomically: never seen half-written
        trials[trial["trial_id"]] = trial
    return trials


# --- a search across families ----------------------------------------------------------------

@pytest.fixture(scope="module")
def auto_run(tmp_path_factory, env):
    """--model auto over two families: Hyperband, 2 epochs at most, factor 2, 3 trials."""
    cwd = tmp_path_factory.mktemp("auto")
    proc = run_cli("--quick", "--model", "auto", "--families", "mlp,cnn", "--max-epochs", "2", "--factor", "2",
                   "--max-trials", "3", "--search-fraction", "0.3", "--histogram-freq", "0", "--run-name", AUTO_RUN,
                   "--profile-batches", "2,4", cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd, proc, exported_metadata(cwd)


@pytest.mark.slow
def test_auto_search_tries_two_families_and_exports_the_best(auto_run):
    cwd, proc, metadata = auto_run
    search = metadata["search"]
    trials = {t["trial_id"]: t for t in search["trials"]}
    assert len(trials) == 3 and all(t["status"] == "COMPLETED" for t in trials.values())
    # Each family's defaults come first, then Hyperband continues the better one for a 2nd epoch.
    first, second, third = (trials[i] for i in sorted(trials))
    assert (first["family"], second["family"]) == ("mlp", "cnn")
    mlp, cnn = models.hyperparams("mlp"), models.hyperparams("cnn")
    assert first["hyperparameters"]["units"] == mlp.units
    assert second["hyperparameters"]["filters"] == ",".join(map(str, cnn.filters))
    assert third["continues"] in (first["trial_id"], second["trial_id"]) and third["epochs_trained"] == 2
    assert all(t["seconds"] > 0 and 0 < t["score"] <= 1 for t in trials.values())
    best, _ = tuning.choose(search["trials"], search["validation_examples"])
    assert search["best"]["trial_id"] == best["trial_id"] and metadata["model"]["family"] == best["family"]
    assert search["selection"] and search["selection"] in proc.stdout
    # The best was retrained on train+validation for the epochs its Hyperband round scheduled.
    assert best["epochs_scheduled"] in (1, 2) and search["best"]["epochs_scheduled"] == best["epochs_scheduled"]
    assert metadata["training"]["epochs_run"] == best["epochs_scheduled"]
    assert metadata["training"]["steps_run"] == best["epochs_scheduled"] * metadata["training"]["steps_per_epoch"]
    assert metadata["training"]["examples"] == 4000 and metadata["training"]["trained_on"] == ["train", "validation"]
    assert "ensemble" not in metadata["model"]  # one model after a search: it serves at one model's cost
    assert search["tuner"] == "hyperband" and search["max_epochs"] == 2 and search["factor"] == 2
    assert search["search_examples"] == 900
    # The CSV next to the search directory says the same.
    rows = (cwd / search["trials_csv"]).read_text().splitlines()
    assert Path(search["trials_csv"]).parent == Path(search["directory"]).parent
    assert rows[0].startswith("trial_id,status,family,score,epochs") and len(rows) == 4
    assert "search          hyperband: 3 trials completed" in proc.stdout
    # Finished: nothing left to resume, so the same command would start a new search.
    assert not list(cwd.glob("work/mnist/tune-*/run.json"))


@pytest.mark.slow
def test_tuned_run_honours_profile_batches(auto_run):
    # The final training of a tuned run is the same training as a plain run's: its TensorBoard
    # extras (here the profiler) land in the run's own logdir, the one metadata.json names.
    cwd, _, metadata = auto_run
    traces = list((cwd / metadata["run"]["logdir"] / "train/plugins/profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert not list((cwd / metadata["run"]["logdir"] / "trials").glob("**/*.xplane.pb"))  # not the trials'


@pytest.mark.slow
def test_tuned_export_is_a_working_savedmodel(auto_run, manual_dir):
    import gzip

    import tensorflow as tf

    cwd, _, metadata = auto_run
    with gzip.open(manual_dir / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
    with gzip.open(manual_dir / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    serve = tf.saved_model.load(str(cwd / "exported/mnist/1")).signatures["serving_default"]
    classes = np.concatenate([serve(images=tf.constant(images[i:i + 2000]))["classes"].numpy()
                              for i in range(0, len(images), 2000)])
    accuracy = float((classes == labels).mean())
    assert accuracy == pytest.approx(metadata["metrics"]["test"]["accuracy"], abs=1e-3)
    assert accuracy > 0.5


@pytest.mark.slow
def test_tensorboard_hparams_lists_every_trial(auto_run, tmp_path):
    cwd, _, metadata = auto_run
    logdir = cwd / "runs/mnist" / AUTO_RUN  # the run's own log dir
    board = Board(logdir, tmp_path / "tensorboard.log")
    try:
        trials = {t["trial_id"]: t for t in metadata["search"]["trials"]}
        names = {f"mnist/{AUTO_RUN}/trials/{i}" for i in trials}

        def groups():
            found = board.json("/data/plugin/hparams/session_groups", body=SESSION_GROUPS_QUERY)["sessionGroups"]
            rows = {g["name"]: g for g in found}
            # Wait until every trial's validation accuracy has been read too.
            ready = names <= set(rows) and all(
                any(m["name"].get("group") == "validation" for m in rows[n]["metricValues"]) for n in names)
            return rows if ready else None

        rows = board.wait_until(groups, "every trial's HParams session")
        assert f"mnist/{AUTO_RUN}" in rows  # the retrained run's own row beside its trials
        for trial_id, trial in trials.items():
            row = rows[f"mnist/{AUTO_RUN}/trials/{trial_id}"]
            hparams = row["hparams"]
            assert hparams["trial"] == trial_id and hparams["family"] == trial["family"]
            # Same names as a run's row: the family's own hyperparameter names.
            for name, value in trial["hyperparameters"].items():
                assert hparams[name] == pytest.approx(value) if isinstance(value, float) else hparams[name] == value
            values = {(m["name"].get("group", ""), m["name"]["tag"]): m["value"] for m in row["metricValues"]}
            # Each trial here trains one epoch of its own, so its last figure is its score.
            assert values[("validation", "epoch_accuracy")] == pytest.approx(trial["score"], abs=1e-6)
    finally:
        board.stop()


# --- resume after kill -9 ---------------------------------------------------------------------

@pytest.mark.slow
def test_resume_after_kill_keeps_finished_trials(tmp_path, env):
    args = [*TINY, "--max-trials", "5", "--max-epochs", "2"]
    process = subprocess.Popen([sys.executable, "-m", "pipelines.mnist", *args], cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        # Kill while a third trial runs: two finished, one half-way.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            statuses = [t["status"] for t in _trial_files(tmp_path).values()]
            if statuses.count("COMPLETED") >= 2 and "RUNNING" in statuses:
                time.sleep(1.0)
                break
            time.sleep(0.2)
        assert process.poll() is None, "the search ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    before = {i: t for i, t in _trial_files(tmp_path).items() if t["status"] == "COMPLETED"}
    assert len(before) >= 2
    assert not (tmp_path / "exported/mnist/1").exists()
    event_files = {p: p.stat().st_mtime_ns for i in before
                   for p in tmp_path.glob(f"runs/mnist/*/trials/{i}/**/*") if p.is_file()}

    again = run_cli(*args, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    out = again.stdout
    assert f"Resuming the search: {len(before)} finished trials kept ({', '.join(sorted(before))})" in out
    assert out.count("Search: Running Trial #") == 5 - len(before)  # only the rest run
    after = _trial_files(tmp_path)
    assert sorted(after) == [str(i) for i in range(5)] and all(t["status"] == "COMPLETED" for t in after.values())
    for trial_id, trial in before.items():  # kept: same ids, same scores, logs untouched
        assert after[trial_id]["score"] == trial["score"]
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in event_files.items())
    metadata = exported_metadata(tmp_path)
    assert metadata["search"]["resumed"] and len(metadata["search"]["trials"]) == 5
    assert sorted(p.name for p in (tmp_path / "exported/mnist").iterdir() if p.name.isdigit()) == ["1"]
    # One run: the resumed search logged its trials under the interrupted run's id.
    assert [p.name for p in (tmp_path / "runs/mnist").iterdir()] == [metadata["run"]["id"]]


# --- distributed: a chief and two workers -------------------------------------------------------

@pytest.mark.slow
def test_chief_and_two_workers_share_one_search(tmp_path, env):
    trials = 4
    args = [*TINY, "--max-trials", str(trials)]
    base = {**os.environ, "PYTHONPATH": str(ROOT), **env, "KERASTUNER_ORACLE_IP": "127.0.0.1",
            "KERASTUNER_ORACLE_PORT": str(free_ports(1)[0])}
    processes = {}
    for name in ("chief", "tuner0", "tuner1"):
        log = open(tmp_path / f"{name}.log", "w")
        processes[name] = (subprocess.Popen([sys.executable, "-m", "pipelines.mnist", *args], cwd=tmp_path,
                                            env={**base, "KERASTUNER_TUNER_ID": name}, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), log)
    try:
        for name, (process, _) in processes.items():
            process.wait(timeout=300)
    finally:
        for process, log in processes.values():
            process.kill()
            process.wait()
            log.close()
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in processes}
    for name, (process, _) in processes.items():
        assert process.returncode == 0, f"{name}:\n{logs[name][-3000:]}"

    ran = {}
    for worker in ("tuner0", "tuner1"):
        line = next(line for line in logs[worker].splitlines() if line.startswith(f"Worker {worker} ran"))
        ids = line.split(":", 1)[1].split(". The chief")[0].strip()
        ran[worker] = [] if ids == "none" else ids.split(", ")
    everything = sorted(ran["tuner0"] + ran["tuner1"])
    assert everything == [str(i) for i in range(trials)], ran  # each trial ran once, on one worker
    oracle = _trial_files(tmp_path)
    assert sorted(oracle) == everything and all(t["status"] == "COMPLETED" for t in oracle.values())
    # The chief's summary lists every trial, then it retrains the best and exports.
    table = logs["chief"].split("Search finished:", 1)[1].split("Trials table:", 1)[0]
    listed = [line.split()[0] for line in table.splitlines()[2:] if line.strip()]
    assert listed == everything
    metadata = exported_metadata(tmp_path)
    assert metadata["search"]["distributed"] and len(metadata["search"]["trials"]) == trials
    assert not (tmp_path / "exported/mnist/2").exists()


def _record(trial_id, family, score, **hyperparameters):
    return {"trial_id": trial_id, "status": "COMPLETED", "family": family, "score": score,
            "hyperparameters": hyperparameters}


def test_a_tie_with_the_defaults_goes_to_the_defaults():
    # 6,000 validation images: one standard error at 99% is 0.13 points.
    defaults, tuned = _record("0000", "cnn", 0.9890, dropout=0.3), _record("0001", "cnn", 0.9901, dropout=0.1)
    chosen, why = tuning.choose([defaults, tuned], 6000)
    assert chosen is defaults and "within one standard error" in why
    # A clear win (here 0.5 points) is taken.
    clear = _record("0001", "cnn", 0.9940, dropout=0.1)
    assert tuning.choose([defaults, clear], 6000) == (clear, "the best validation accuracy")
    # A Hyperband round that continues the defaults counts as the defaults.
    continued = _record("0002", "cnn", 0.9895, dropout=0.3)
    assert tuning.choose([defaults, tuned, continued], 6000)[0] is continued
    # --model auto: each family's first trial is its defaults.
    auto = [_record("0000", "mlp", 0.9700, units=256), _record("0001", "cnn", 0.9880, dropout=0.3),
            _record("0002", "cnn", 0.9901, dropout=0.1), _record("0003", "mlp", 0.9899, units=256)]
    assert tuning.choose(auto, 6000)[0] is auto[3]


def plan(args: list[str]) -> SearchSettings | None:
    """The search the command line `args` asks for (None: train the family's defaults)."""
    return cli.config_from_args(cli.build_parser().parse_args(args)).search_plan()


# --- bad flags ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, phrase", [
    (["--tuner", "grid"], "invalid choice: 'grid'"),
    (["--max-epochs", "two"], "--max-epochs: invalid int value: 'two'"),
    (["--families", "mlp,resnet"], "unknown model family 'resnet'"),
    (["--model", "automl"], "invalid choice: 'automl'"),
])
def test_malformed_search_flags_are_refused_by_the_parser(args, phrase, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(args)
    assert exit_info.value.code == 2
    assert phrase in capsys.readouterr().err


@pytest.mark.parametrize("args, phrase", [
    (["--max-trials", "0"], "--max-trials must be a positive whole number, got 0."),
    (["--max-epochs", "-2"], "--max-epochs must be a positive whole number, got -2."),
    (["--factor", "1"], "--factor must be a whole number of at least 2, got 1."),
    (["--search-fraction", "1.5"], "--search-fraction must be in (0, 1], got 1.5."),
])
def test_out_of_range_search_flags_are_refused_by_the_config(args, phrase):
    config = cli.config_from_args(cli.build_parser().parse_args(args))
    with pytest.raises(UserError) as error:
        config.validate()
    assert str(error.value) == phrase


@pytest.mark.parametrize("args, phrase", [
    (["--no-tune", "--max-trials", "3"],
     "--max-trials configures the hyperparameter search, which --no-tune turns off"),
    (["--no-tune", "--model", "auto"], "--model auto configures the hyperparameter search"),
    (["--families", "mlp,cnn"], "--families chooses among families for --model auto"),
    (["--tuner", "random", "--factor", "3"], "--factor is Hyperband's"),
    (["--tune", "--strategy", "mirrored"], "--strategy distributes a single training"),
])
def test_contradicting_search_flags_are_explained(args, phrase):
    with pytest.raises(UserError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        plan(args)


def test_search_is_the_default_except_for_a_smoke_test(capsys):
    assert plan([]) == SearchSettings()
    assert plan(["--quick"]) is None
    assert "No hyperparameter search (--quick)" in capsys.readouterr().out
    assert plan(["--quick", "--tune"]) == SearchSettings()
    assert plan(["--strategy", "mirrored"]) is None
    budget = SearchSettings().budget(quick=False, kind="image").to_json()
    assert budget == {"tuner": "hyperband", "max_trials": config.DEFAULT_HYPERBAND_TRIALS["image"],
                      "max_epochs": config.DEFAULT_MAX_EPOCHS, "factor": config.DEFAULT_FACTOR,
                      "search_fraction": config.DEFAULT_FRACTION}


def test_the_default_hyperband_cap_fits_the_default_schedule_for_images_only():
    # Another schedule, a smoke test, text or a table runs Hyperband's own; a given cap always wins.
    assert SearchSettings().budget(quick=False, kind="image").max_trials == 7
    assert SearchSettings().budget(quick=False, kind="text").max_trials is None
    assert SearchSettings().budget(quick=False, kind="table").max_trials is None
    assert SearchSettings(max_epochs=10).budget(quick=False, kind="image").max_trials is None
    assert SearchSettings(factor=3).budget(quick=False, kind="image").max_trials is None
    assert SearchSettings().budget(quick=True, kind="image").max_trials is None
    assert SearchSettings(max_trials=20).budget(quick=False, kind="image").max_trials == 20
    assert SearchSettings(tuner="random").budget(quick=False, kind="image").max_trials == config.DEFAULT_TRIALS


def test_the_default_hyperband_cap_is_its_first_round_and_the_best_continued(tmp_path):
    """KerasTuner's own Hyperband oracle, driven with made-up scores (no training): under the
    default cap it proposes six trials of 4 epochs, the defaults first, then continues the best
    of them (not the first) to 15 epochs, and stops: none of its later brackets' 15-epoch trials."""
    budget = SearchSettings().budget(quick=False, kind="image")
    oracle = HyperbandOracle(objective=kt.Objective("val_accuracy", "max"), seed=0,
                             max_epochs=budget.max_epochs, factor=budget.factor)
    oracle.max_trials = budget.max_trials
    space = kt.HyperParameters()
    space.Float("learning_rate", 1e-3, 1e-1, sampling="log", default=1e-2)
    oracle._set_project_dir(str(tmp_path), "search")
    oracle.hyperparameters = space
    proposed, ids = [], []
    while (trial := oracle.create_trial("tuner0")).status == "RUNNING":
        ids.append(trial.trial_id)
        values = trial.hyperparameters.values
        proposed.append((values["tuner/epochs"], values.get("tuner/trial_id")))
        score = 0.99 if len(proposed) == 3 else 0.9  # the third trial is the best of the round
        oracle.update_trial(trial.trial_id, {"val_accuracy": score}, step=values["tuner/epochs"])
        trial.status = "COMPLETED"  # as the tuner marks a trial that ran
        oracle.end_trial(trial)
    assert proposed == [(4, None)] * 6 + [(15, ids[2])]
    assert oracle.trials[ids[0]].hyperparameters.values["learning_rate"] == 1e-2  # the defaults first


def test_trials_train_on_a_fraction_but_never_too_few_examples():
    default = SearchSettings()
    assert default.search_examples(54_000, quick=False) == 10_800  # MNIST: the fifth, above the floor
    assert default.search_examples(5_110, quick=False) == 5_110  # a small split: all of it
    assert default.search_examples(30_000, quick=False) == config.MIN_SEARCH_EXAMPLES
    assert SearchSettings(search_fraction=0.2).search_examples(5_110, quick=False) == 1_022  # as asked
    assert default.search_examples(3_000, quick=True) == 3_000


def test_tf_config_with_several_workers_trains_together_instead_of_searching(monkeypatch, capsys):
    # The plain command on every machine of a Kubeflow/Vertex AI job: one multi-worker
    # training, not a search and an export per machine.
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]},
                                                "task": {"type": "worker", "index": 1}}))
    assert plan([]) is None
    assert "No hyperparameter search (TF_CONFIG with 2 workers)" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"TF_CONFIG with 2 workers distributes a single training"):
        plan(["--tune"])
    # Asked for one device: TF_CONFIG does not apply, so the search is the default again.
    assert plan(["--strategy", "default"]) == SearchSettings()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:2001"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert plan([]) == SearchSettings()


def test_library_and_command_line_share_the_default(capsys):
    assert PipelineConfig().search_plan() == SearchSettings() == plan([])
    assert PipelineConfig(quick=True).search_plan() is None and plan(["--quick"]) is None
    assert PipelineConfig(tune=False).search_plan() is None
    assert PipelineConfig(search=SearchSettings(tuner="random")).search_plan() == SearchSettings(tuner="random")
    with pytest.raises(UserError, match="--strategy distributes a single training"):
        PipelineConfig(strategy="mirrored", tune=True).search_plan()
    with pytest.raises(UserError, match="--max-trials configures the hyperparameter search"):
        PipelineConfig(strategy="mirrored", search=SearchSettings(max_trials=3), tune=False).search_plan()


def test_bad_search_settings_fail_before_any_work(tmp_path, monkeypatch, data_dir):
    from tfpipeline.pipeline import run

    def config(**kwargs):
        search = kwargs.pop("search", SearchSettings())
        return PipelineConfig(quick=True, tune=True, data_dir=data_dir, work_dir=str(tmp_path / "work"),
                              export_dir=str(tmp_path / "exported"), logdir=str(tmp_path / "runs"), search=search,
                              **kwargs)

    with pytest.raises(UserError, match="with --model auto every family is searched"):
        run(config(model="auto", hparams={"dropout": 0.1}))
    with pytest.raises(UserError, match="--search-fraction must be in"):
        run(config(search=SearchSettings(search_fraction=0.0)))
    with pytest.raises(UserError, match="no hyperparameter 'depth'"):
        run(config(model="mlp", hparams={"depth": 3}))
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    with pytest.raises(UserError, match="KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID are not"):
        run(config())
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_bad_search_flag_from_the_command_line(tmp_path):
    proc = run_cli("--no-tune", "--tuner", "random", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--tuner configures the hyperparameter search, which --no-tune turns off" in proc.stderr.replace("\n", " ")


# --- memory across trials ------------------------------------------------------------------------

@pytest.mark.slow
def test_memory_stays_flat_across_trials():
    proc = subprocess.run([sys.executable, "-m", "bench.tuning_memory", "--trials", "10"], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["trials"] == 10
    # Resident memory after trial 10 within 10% of after trial 3.
    assert summary["growth_trial3_to_trial10"] <= 0.10, summary
