"""The one pipeline every run goes through:

    data → [search] → train → evaluate → gate → export → TensorBoard summary

`run(PipelineConfig(...))` is what `python -m pipelines.mnist` calls and what tests call
directly. Each stage is a function in its own module (data, tuning, training, evaluation, gate,
export, tensorboard_logs); this one wires them together and records where everything went.
The search stage is optional: without it the family's defaults are trained; with it the best
trial's family and hyperparameters are, on train + validation, for the epochs it needed.
Either way the same code trains, evaluates, gates and exports.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
import tensorflow_datasets as tfds

from tfpipeline import data as data_lib
from tfpipeline import distribute, export, models, runstate, training
from tfpipeline.config import PipelineConfig
from tfpipeline.distribute import multiworker, sharding
from tfpipeline.errors import HeldBack, UserError
from tfpipeline.export import gate
from tfpipeline.export import tflite as quantize
from tfpipeline.report import evaluation
from tfpipeline.report import tensorboard as tensorboard_logs
from tfpipeline.training import ensemble

__all__ = ["PipelineConfig", "PipelineResult", "run"]


@dataclasses.dataclass
class PipelineResult:
    run_id: str
    export_path: Path | None  # None on a worker that is not the chief: it exports nothing
    metadata_path: Path | None
    logdir: Path
    test_accuracy: float
    metadata: dict


@dataclasses.dataclass
class _Trained:
    """What the training stage hands on."""

    model: keras.Model
    family: str
    hp: Any
    settings: training.TrainSettings
    epochs_run: int
    steps_run: int
    resumed: bool
    trained_on: list[str]
    examples: int
    validation: Any  # the batched validation dataset, or None after a search (trained on it)
    weights_sha256: str
    run_log: tensorboard_logs.RunLog
    recovery: dict | None = None  # what training did after a divergence (training.recovery_of)
    input_sharding: dict | None = None  # multi-worker: which worker read what (sharding.training_input)
    members: list[dict] | None = None  # an ensemble's members (seed, epochs, steps), None for one model


def run(config: PipelineConfig) -> PipelineResult:
    """Run the pipeline; raises `UserError` for a mistake the user can fix, `gate.HeldBack`
    when the new version is not published, `training.TrainingDiverged` on a NaN loss."""
    started = time.time(), dt.datetime.now(dt.timezone.utc)
    config.validate()
    plan = config.search_plan()
    if plan is not None and config.image_freq:
        raise UserError("--image-freq logs validation images while training, but a tuned run trains the best "
                        "trial on train + validation, so there is no validation split to show. Drop "
                        "--image-freq (the test images are logged at the end), or add --no-tune.")
    # Before anything else touches TensorFlow: --cpu-devices and MultiWorkerMirrored must.
    # A search runs each trial on one device, and so does the training of its best.
    dist = distribute.setup("default" if plan else config.strategy, cpu_devices=config.cpu_devices,
                            lr_scaling=config.lr_scaling)
    export_base = export.ensure_writable(dist.writable(Path(config.export_dir) / config.dataset_name))
    keras.utils.set_random_seed(config.seed)  # Python, NumPy and TF seeds: same weights, same order
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    datasets = data_lib.load(config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir,
                             validation_fraction=config.validation_fraction, quick=config.quick,
                             image_size=config.image_size, channels=config.channels,
                             cache_budget=config.cache_budget, work_dir=config.work_dir, seed=config.seed,
                             scanner=sharding.shared_scan(dist))  # None unless multi-worker
    if config.export_tflite:  # refused before any training time is spent
        quantize.check_supported(datasets.spec.input)
    if dist.kind != "multi_worker":  # each worker decodes only what it reads (tfpipeline.distribute.sharding)
        datasets = datasets.decode_into_memory(verbose=1 if config.verbose is None else config.verbose)
    state = _run_state(config, plan, dist)
    logdir = dist.writable(Path(config.logdir) / config.dataset_name / state.run_id)

    found = None
    if plan is not None:
        from tfpipeline import tuning  # KerasTuner is slow to import: only for a search

        found = tuning.search(config, plan, datasets, state, logdir)
        if found.worker is not None:
            return PipelineResult(state.run_id, None, None, logdir, float("nan"), {"search": found.to_json()})
    trained = _train(config, dist, datasets, found, state, logdir)
    if not dist.is_chief:
        return PipelineResult(state.run_id, None, None, logdir, float("nan"), {"distribution": {
            **dist.to_json(trained.hp.batch_size, trained.hp.learning_rate),
            "weights_sha256": trained.weights_sha256, "worker": dist.worker_name,
            **({"input": trained.input_sharding} if trained.input_sharding else {})}})
    return _evaluate_and_publish(config, dist, datasets, found, trained, state, logdir, export_base, started)


def _run_state(config: PipelineConfig, plan, dist: distribute.Distribution) -> runstate.RunState:
    """The unfinished run of this command (to resume), or a new one."""
    if plan is not None:
        from tfpipeline import tuning

        this_role = tuning.role()
        if this_role == "worker":  # the chief writes run.json before it listens
            tuning.wait_for_chief()
        state_dir = Path(config.work_dir) / config.dataset_name / runstate.key(
            f"tune-{config.model}", tuning.identity(config, plan))
        state = runstate.resolve(state_dir, runstate.new_run_id(config.run_name, config.model, True),
                                 overwrite=plan.overwrite, follower=this_role == "worker")
        if this_role == "worker" and state.created:
            print(f"Worker: no run of the chief's in {state_dir} (storage not shared): this worker's "
                  f"checkpoints and logs go to run {state.run_id} here.", flush=True)
        return state
    hp = _family_hyperparams(config)
    identity = {"dataset": config.dataset, "model": config.model, "hp": dataclasses.asdict(hp),
                "seed": config.seed, "quick": config.quick, "validation_fraction": config.validation_fraction,
                **config.input_identity()}
    if dist.kind != "default":  # another global batch: another run
        identity["distribution"] = dist.identity()
    identity.update(training.optimizer_options(config))  # only when set: older keys stay valid
    state_dir = dist.writable(Path(config.work_dir) / config.dataset_name / runstate.key(config.model, identity))
    return runstate.resolve(state_dir, runstate.new_run_id(config.run_name, config.model, False))


def _family_hyperparams(config: PipelineConfig):
    """The family's defaults with the user's overrides (--hparam, --epochs, ...)."""
    overrides = {**config.pinned(), **({"epochs": config.epochs} if config.epochs is not None else {})}
    hp = models.hyperparams(config.model, overrides)
    if config.quick and config.epochs is None:  # an explicit --epochs still counts (e.g. resume tests)
        hp = dataclasses.replace(hp, epochs=1)
    return hp


def _train(config: PipelineConfig, dist: distribute.Distribution, datasets: data_lib.Datasets, found,
           state: runstate.RunState, logdir: Path) -> _Trained:
    """Build, compile and fit the model: the family's defaults, or the search's best trial on
    train + validation (no split is left to stop on: it trains the epochs the search found).
    With `config.members(...)` above 1, that many are trained, each with its own seed, and
    combined into one model that averages their probabilities (tfpipeline/ensemble.py)."""
    family, hp = (found.family, found.hyperparams) if found else (config.model, _family_hyperparams(config))
    print(dist.describe(hp.batch_size, hp.learning_rate), flush=True)
    spec = datasets.spec
    train, trained_on = datasets.train, ["train"]
    if found:
        train, trained_on = datasets.train.concatenate(datasets.validation), ["train", "validation"]
    num_train = sum(spec.num_examples[role] for role in trained_on)
    validation = None if found else datasets.batched(dist.global_batch(hp.batch_size), config.seed)(
        datasets.validation, False)
    # Global batch and scaled learning rate: steps per epoch and the schedule follow from them.
    global_hp = dataclasses.replace(hp, batch_size=dist.global_batch(hp.batch_size),
                                    learning_rate=dist.learning_rate(hp.learning_rate))
    settings = training.settings_for(global_hp, num_train, verbose=config.verbose,
                                     histogram_freq=config.histogram_freq, profile_batches=config.profile_batches,
                                     **({"early_stopping_patience": 0} if found else {}),
                                     **training.optimizer_options(config))
    if found:
        keras.backend.clear_session()  # the trials' graphs and models
        keras.utils.set_random_seed(config.seed)
    logs: dict[str, tensorboard_logs.RunLog] = {}

    def build(member: int) -> keras.Model:
        if member:  # the first member is the single model a run without an ensemble trains
            keras.utils.set_random_seed(config.seed + member)
        with dist.strategy.scope():  # model, optimizer and metric variables: one copy per replica
            model = training.compile_model(models.build(family, spec.input_shape, spec.num_classes, hp), settings)
        if not member:  # HParams session now (a failed run still gets its row); images and summary at the end.
            logs["run"] = tensorboard_logs.RunLog(logdir, dataclasses.replace(config, model=family), hp, model,
                                                  spec.class_names, settings.epochs * settings.steps_per_epoch,
                                                  spec=spec.input)
        return model

    def fit(member: int) -> tuple[keras.Model, dict]:
        model = build(member)
        return model, _fit_member(member, model, config, dist, datasets, family, hp, settings, train, trained_on,
                                  validation, state, logdir, logs["run"])

    members, records = ensemble.train_members(config.members(tuned=found is not None), fit, build, state.run_dir)
    if dist.kind == "multi_worker":
        # Evaluate and export a single-device copy: it runs on this machine alone, with no
        # collective the other workers would have to join (reading the weights is the last).
        members = [distribute.local_copy(model) for model in members]
    model = ensemble.combine(members)
    digest = distribute.weights_digest(model)
    print(f"Final weights sha256 {digest}", flush=True)
    first = records[0]
    return _Trained(model, family, hp, settings, first["epochs_run"], first["steps_run"],
                    any(r["resumed"] or r.get("loaded", False) for r in records), trained_on, num_train, validation,
                    digest, logs["run"], first["recovery"], input_sharding=first["input_sharding"],
                    members=records if len(records) > 1 else None)


def _fit_member(member: int, model, config, dist, datasets, family, hp, settings, train, trained_on, validation,
                state, logdir, run_log) -> dict:
    """Fit one model (one member of an ensemble, with its own seed for the data order and the
    augmentation); returns its record for the metadata."""
    seed = config.seed + member
    backup = state.run_dir / runstate.key("train", {"family": family, "hp": dataclasses.asdict(hp),
                                                     "distribution": dist.identity(),
                                                     **({"member": member} if member else {})})
    resumed = backup.exists()
    if resumed:
        print(f"Resuming interrupted run {state.run_id} from its last saved epoch ({backup}).", flush=True)
    fit = multiworker.fit if dist.kind == "multi_worker" else training.fit  # keras-team/keras#20585
    batches = datasets.batched(dist.global_batch(hp.batch_size), seed)
    augmentation = models.augmentation(family, hp, seed)
    train_input, input_sharding = augmentation.apply(batches(train, True)), None
    if dist.kind == "multi_worker" and trained_on == ["train"]:  # a folder's files: each worker its share
        train_input, input_sharding = sharding.training_input(
            datasets, train_input, workers=dist.workers, replicas=dist.replicas, per_replica_batch=hp.batch_size,
            steps_per_epoch=settings.steps_per_epoch, seed=seed, augmentation=augmentation)
    history = fit(model, train_input, validation, settings, logdir=logdir if not member else logdir / f"member{member}",
                  backup_dir=backup,
                  extra_callbacks=[*augmentation.callbacks(), *(run_log.callbacks(validation) if not member else [])])
    return {"seed": seed, "epochs_run": training.epochs_completed(history),
            # Optimizer steps over the whole run, resumed parts included: the schedule's position.
            "steps_run": int(model.optimizer.iterations.numpy()), "resumed": resumed,
            "recovery": training.recovery_of(history), "input_sharding": input_sharding}


def _evaluate_and_publish(config, dist, datasets, found, trained: _Trained, state, logdir, export_base,
                          started) -> PipelineResult:
    """Evaluate once on test, gate against the latest published version, then publish (or
    hold back) the verified export and write the run's TensorBoard summary."""
    spec = datasets.spec
    test_images, test_labels = evaluation.collect(datasets.batched(1000, config.seed)(datasets.test, False))
    test_eval = evaluation.evaluate(trained.model, test_images, test_labels, spec.class_names)
    for i, member in enumerate(trained.members or []):  # each alone, to show what averaging added
        member["test_accuracy"] = evaluation.evaluate(trained.model.get_layer(f"member{i}"), test_images,
                                                      test_labels, spec.class_names).accuracy
    if found:
        validation = {"accuracy": found.best["score"], "loss": found.best["val_loss"],
                      "source": f"search: trial {found.best['trial_id']} before the training on train + validation"}
    else:
        val_images, val_labels = evaluation.collect(trained.validation)
        val_eval = evaluation.evaluate(trained.model, val_images, val_labels, spec.class_names)
        validation = {"accuracy": val_eval.accuracy, "loss": val_eval.loss}
    logdir.mkdir(parents=True, exist_ok=True)
    (logdir / "metrics.json").write_text(json.dumps({"validation": validation, "test": test_eval.to_json()},
                                                    indent=2))
    metadata = _metadata(config, dist, spec, found, trained, validation, test_eval, state, logdir, started)
    tflite = quantize.settings_for(config, datasets.train, spec.input)  # None without --export-tflite
    with export.staged(trained.model, spec.input, export_base, test_images, test_labels,
                       test_eval.accuracy) as candidate:
        if tflite is not None:  # issue 17: raises quantize.QuantizationError past the allowed drop
            metadata["export"] = {"tflite": quantize.write_verified(tflite, candidate.path, test_images, test_labels,
                                                                    candidate.verified_accuracy)}
        decision = gate.decide(export_base, test_images, test_labels, spec.class_names, test_eval, spec=spec.input,
                               max_regression=config.max_regression, force=config.force_publish)
        metadata["gate"] = decision.to_json()
        print(decision.message(), flush=True)
        if decision.publish:
            result = export.publish(candidate, metadata)
            path, metadata_path = result.path, result.metadata_path
        else:
            path = export.hold(candidate, metadata, state.run_id)
            metadata_path = path / "metadata.json"
    trained.run_log.finish(test_images, test_labels, test_eval.predictions, metadata, path, model=trained.model)
    ensemble.discard(state.run_dir)  # the members are in the export now
    state.finish()  # the next run of this command starts anew
    result = PipelineResult(state.run_id, path, metadata_path, logdir, test_eval.accuracy, metadata)
    if not decision.publish:
        raise HeldBack(decision, path, result)
    return result


def _metadata(config, dist, spec, found, trained: _Trained, validation, test_eval, state, logdir,
              started) -> dict:
    """metadata.json: what was trained on what, how, how well, and where everything went."""
    metadata = {
        "dataset": spec.to_json(),
        "model": {"family": trained.family, "hyperparameters": dataclasses.asdict(trained.hp),
                  "parameters": trained.model.count_params(), "members": len(trained.members or [None]),
                  **({"ensemble": trained.members} if trained.members else {})},
        "training": {"epochs_requested": trained.hp.epochs, "epochs_run": trained.epochs_run,
                     "steps_per_epoch": trained.settings.steps_per_epoch, "steps_run": trained.steps_run,
                     "trained_on": trained.trained_on, "examples": trained.examples, "seed": config.seed, "deterministic": config.deterministic,
                     "quick": config.quick, "resumed": trained.resumed,
                     "optimizer": training.optimizer_record(trained.settings), "recovery": trained.recovery},
        "distribution": {**dist.to_json(trained.hp.batch_size, trained.hp.learning_rate),
                         "weights_sha256": trained.weights_sha256,
                         **({"input": trained.input_sharding} if trained.input_sharding else {})},
        "metrics": {"validation": validation, "test": test_eval.to_json()},
        "run": {"id": state.run_id, "logdir": str(logdir), **provenance(),
                "started": started[1].isoformat(timespec="seconds"),
                "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "wall_seconds": round(time.time() - started[0], 1)},
    }
    if found:
        metadata["search"] = found.to_json()
    return metadata


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance() -> dict:
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tensorflow_datasets": tfds.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "host": platform.node(),
    }
