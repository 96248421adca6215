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
from tfpipeline.report import evaluation, timing, trainrate
from tfpipeline.report import tensorboard as tensorboard_logs
from tfpipeline.training import ensemble, internals

__all__ = ["PipelineConfig", "PipelineResult", "WorkerResult", "run"]


@dataclasses.dataclass
class PipelineResult:
    """What a run that evaluated and exported returns (the chief's, or the only process's)."""

    run_id: str
    export_path: Path
    metadata_path: Path
    logdir: Path
    test_accuracy: float
    metadata: dict


@dataclasses.dataclass(frozen=True)
class WorkerResult:
    """What a worker that is not the chief returns: it trained, or ran search trials, and
    leaves evaluation and export to the chief."""

    run_id: str
    logdir: Path
    worker: str  # its name: "worker 1", or a search worker's KERASTUNER_TUNER_ID
    workers: int | None = None  # a multi-worker training's worker count; None for a search worker
    search: dict | None = None  # a search worker: what `tuning.search` recorded (the trials it ran)
    distribution: dict | None = None  # a training worker: its strategy, weights digest and input

    @property
    def searched(self) -> bool:
        return self.search is not None


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every stage of one run shares, built once in `run`."""

    config: PipelineConfig
    dist: distribute.Distribution
    datasets: data_lib.Datasets
    state: runstate.RunState
    logdir: Path
    export_base: Path
    started: tuple[float, dt.datetime]  # time.time() and the UTC date when the run began
    times: timing.StageTimes  # each stage's seconds, for the summary and metadata.json's "timing"
    found: Any = None  # the search's `tuning.SearchResult`; None without a search


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


@dataclasses.dataclass(frozen=True)
class _Training:
    """What every member of an ensemble trains on, and how."""

    family: str
    hp: Any  # the family's Hyperparams
    settings: training.TrainSettings
    train: tf.data.Dataset  # unbatched
    trained_on: list[str]
    validation: tf.data.Dataset | None  # batched


def run(config: PipelineConfig, *, started: float | None = None) -> PipelineResult | WorkerResult:
    """Run the pipeline: data, [search], train, evaluate, gate, export, TensorBoard summary.

    Each stage's wall time goes into the summary and metadata.json's `timing`, beside the day's
    train rate (measured first, before anything trains, unless `TFPIPELINE_TRAIN_RATE=0`:
    tfpipeline/report/trainrate.py).

    Args:
        config: the run's settings (`PipelineConfig.validate` checks them first).
        started: when the command began (`time.time()`), if before this call: the command
            passes its process's start, so the total includes Python's start-up and imports.

    Returns:
        A `PipelineResult` (where the export and its metadata went, the test accuracy), or a
        `WorkerResult` on a worker of a distributed search or training that is not the chief.

    Raises:
        UserError: a mistake the user can fix (the message says how).
        HeldBack: the gate kept the new version back (`gate.decide`); it carries the result.
        TrainingDiverged: the loss diverged and the retry did not recover (`training.fit`).
        ExportVerificationError, QuantizationError: the export failed its checks.
    """
    times = timing.StageTimes(started)
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
    # Data first (its mistakes come before the probe's seconds); neither draws from the seeds below.
    datasets = _data(config, dist, times)
    _measure_train_rate(times, dist, searching=plan is not None)
    keras.utils.set_random_seed(config.seed)  # Python, NumPy and TF seeds: same weights, same order
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    state = _run_state(config, plan, dist, datasets.spec.version)
    logdir = dist.writable(Path(config.logdir) / config.dataset_name / state.run_id)
    ctx = _Run(config, dist, datasets, state, logdir, export_base, started, times)

    if plan is not None:
        from tfpipeline import tuning  # KerasTuner is slow to import: only for a search

        with times.stage("search"):
            found = tuning.search(config, plan, datasets, state, logdir)
        if found.info.get("resumed"):
            times.note("search", "resumed an interrupted search: this session's seconds only")
        if found.worker is not None:
            return WorkerResult(state.run_id, logdir, worker=found.worker, search=found.to_json())
        ctx = dataclasses.replace(ctx, found=found)
    trained = _train(ctx)
    if not dist.is_chief:
        return WorkerResult(state.run_id, logdir, worker=dist.worker_name, workers=dist.workers,
                            distribution=_distribution(ctx, trained))
    return _evaluate_and_publish(ctx, trained)


def _measure_train_rate(times: timing.StageTimes, dist: distribute.Distribution, *, searching: bool) -> None:
    """The day's train rate (tfpipeline/report/trainrate.py), into `times`: on the chief only."""
    if not trainrate.enabled():
        times.skip("train rate", f"not measured: {trainrate.ENV_TRAIN_RATE}=0")
        return
    if searching:
        from tfpipeline import tuning

        if tuning.role() == "worker":
            times.skip("train rate", "not measured: a search worker (the chief measures it)")
            return
    if not dist.is_chief:
        times.skip("train rate", "not measured: a worker that is not the chief (the chief measures it)")
        return
    with times.stage("train rate"):
        times.train_rate = trainrate.measure()
    print(f"Train rate today: {times.train_rate['images_per_s']:,} images/s ({trainrate.MODEL}; measured in "
          f"{times.train_rate['seconds']:.1f} s; {trainrate.ENV_TRAIN_RATE}=0 skips it).", flush=True)


def _data(config: PipelineConfig, dist: distribute.Distribution, times: timing.StageTimes) -> data_lib.Datasets:
    """The run's datasets, read (TFDS prepares them the first time) and decoded into memory."""
    with times.stage("data"):
        datasets = _load(config, dist)
    if config.export_tflite:  # refused before any training time is spent
        quantize.check_supported(datasets.spec.input)
    # Each worker decodes only what it reads (tfpipeline.distribute.sharding); text and tables
    # are in memory already (`Datasets.in_memory`), so this is a no-op for them.
    if dist.kind != "multi_worker":
        with times.stage("data: decode into memory"):
            datasets = datasets.decode_into_memory(verbose=1 if config.verbose is None else config.verbose)
    return datasets


def _load(config: PipelineConfig, dist: distribute.Distribution) -> data_lib.Datasets:
    """The run's datasets, read by the loader of its kind (`data.load`)."""
    if config.kind != "image":
        options = config.options()
        return data_lib.load(config.dataset, kind=config.kind, validation_fraction=config.validation_fraction,
                             quick=config.quick, seed=config.seed, label_column=options.label_column,
                             text_column=getattr(options, "text_column", None),
                             table_flags=options.flags() if config.kind == "table" else None,
                             cache_budget=config.cache_budget, work_dir=config.work_dir,
                             # multi-worker (never with a search): each worker reads its own share
                             shard=(dist.input_pipeline_id, dist.workers) if dist.kind == "multi_worker" else None)
    return data_lib.load(config.dataset, data_dir=config.data_dir, manual_dir=config.manual_dir,
                         validation_fraction=config.validation_fraction, quick=config.quick,
                         image_size=config.image_size, channels=config.channels,
                         cache_budget=config.cache_budget, work_dir=config.work_dir, seed=config.seed,
                         scanner=sharding.shared_scan(dist))  # None unless multi-worker


def _run_state(config: PipelineConfig, plan, dist: distribute.Distribution,
               data_version: str = "") -> runstate.RunState:
    """The unfinished run of this command (to resume), or a new one."""
    if plan is not None:
        from tfpipeline import tuning

        this_role = tuning.role()
        if this_role == "worker":  # the chief writes run.json before it listens
            tuning.wait_for_chief()
        # --epochs too: the search's own key leaves it out, but it sets the retraining's length.
        state_dir = Path(config.work_dir) / config.dataset_name / runstate.key(
            f"tune-{config.model}",
            {**tuning.identity(config, plan), **({"epochs": config.epochs} if config.epochs is not None else {}),
             **_data_identity(data_version)})
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
    identity.update(_data_identity(data_version))
    state_dir = dist.writable(Path(config.work_dir) / config.dataset_name / runstate.key(config.model, identity))
    return runstate.resolve(state_dir, runstate.new_run_id(config.run_name, config.model, False))


def _data_identity(data_version: str) -> dict:
    """A resume key's data part: a folder's, text's or table's digest of its examples and split
    (files-, text-, rows-), so a rerun after the data changed starts afresh instead of resuming
    weights trained on another split. TFDS versions are already in the dataset's name and keep
    older keys."""
    return {"files": data_version} if data_version.startswith(("files-", "text-", "rows-")) else {}


def _family_hyperparams(config: PipelineConfig):
    """The family's defaults with the user's overrides (--hparam, --epochs, ...)."""
    overrides = {**config.pinned(), **({"epochs": config.epochs} if config.epochs is not None else {})}
    hp = models.hyperparams(config.model, overrides, kind=config.kind)
    if config.quick and config.epochs is None:  # an explicit --epochs still counts (e.g. resume tests)
        hp = dataclasses.replace(hp, epochs=1)
    return hp


def _training(ctx: _Run) -> _Training:
    """The family's defaults, or the search's best trial on train + validation (no split is
    left to stop on: it trains the epochs the search found), with the settings for them."""
    config, dist, datasets, found = ctx.config, ctx.dist, ctx.datasets, ctx.found
    family, hp = (found.family, found.hyperparams) if found else (config.model, _family_hyperparams(config))
    print(dist.describe(hp.batch_size, hp.learning_rate), flush=True)
    train, trained_on = datasets.train, ["train"]
    if found:
        train, trained_on = datasets.train.concatenate(datasets.validation), ["train", "validation"]
    train = _class_weighted(config, datasets, train)
    num_train = sum(datasets.spec.num_examples[role] for role in trained_on)
    validation = None if found else datasets.batched(
        datasets.validation, batch_size=dist.global_batch(hp.batch_size), seed=config.seed, training=False)
    # Global batch and scaled learning rate: steps per epoch and the schedule follow from them.
    global_hp = dataclasses.replace(hp, batch_size=dist.global_batch(hp.batch_size),
                                    learning_rate=dist.learning_rate(hp.learning_rate))
    settings = training.settings_for(global_hp, num_train, verbose=config.verbose,
                                     histogram_freq=config.histogram_freq, profile_batches=config.profile_batches,
                                     **({"early_stopping_patience": 0} if found else {}),
                                     **training.optimizer_options(config))
    return _Training(family, hp, settings, train, trained_on, validation)


def _class_weighted(config: PipelineConfig, datasets: data_lib.Datasets, train: tf.data.Dataset) -> tf.data.Dataset:
    """`--class-weight balanced` (tables): the training examples with their class's weight."""
    if config.kind != "table" or config.table.class_weight != "balanced":
        return train
    from tfpipeline.data import table

    weighted, weights = table.balanced(datasets, train)
    print("Class weights (balanced): " + ", ".join(f"{datasets.spec.class_names[c]} {w:.3g}"
                                                   for c, w in sorted(weights.items())), flush=True)
    return weighted


def _train(ctx: _Run) -> _Trained:
    """Build, compile and fit the model (`_training` says what on). With
    `config.members(...)` above 1, that many are trained, each with its own seed, and
    combined into one model that averages their probabilities (tfpipeline/training/ensemble.py)."""
    config, dist, spec = ctx.config, ctx.dist, ctx.datasets.spec
    job = _training(ctx)
    if ctx.found:
        keras.backend.clear_session()  # the trials' graphs and models
        keras.utils.set_random_seed(config.seed)
    logs: dict[str, tensorboard_logs.RunLog] = {}

    def build(member: int) -> keras.Model:
        if member:  # the first member is the single model a run without an ensemble trains
            keras.utils.set_random_seed(config.seed + member)
        with dist.strategy.scope():  # model, optimizer and metric variables: one copy per replica
            model = training.compile_model(models.build(job.family, spec.input_shape, spec.num_classes, job.hp,
                                                        input=spec.input), job.settings)
        if config.kind != "image" and dist.replicas > 1:  # string inputs: see training.internals
            internals.build_from_one_replica(model)
        if not member:  # HParams session now (a failed run still gets its row); images and summary at the end.
            logs["run"] = tensorboard_logs.RunLog(ctx.logdir, dataclasses.replace(config, model=job.family), job.hp,
                                                  model, spec.class_names,
                                                  job.settings.epochs * job.settings.steps_per_epoch, spec=spec.input)
        return model

    count = config.ensemble

    def fit(member: int) -> tuple[keras.Model, dict]:
        with ctx.times.stage(_stage_name(member, count)):
            model = build(member)
            record = _fit_member(ctx, job, model, member=member, run_log=logs["run"])
        if record["resumed"]:
            ctx.times.note(_stage_name(member, count), "resumed at the interrupted run's last saved epoch: "
                                                       "this session's seconds only")
        return model, record

    def load(member: int) -> keras.Model:  # a member the interrupted run finished: rebuilt, then its weights
        ctx.times.skip(_stage_name(member, count), "not trained again: finished before the run was interrupted")
        return build(member)

    shaping = {k: v for k, v in dataclasses.asdict(job.settings).items()  # not the logging ones
               if k not in ("verbose", "histogram_freq", "profile_batches")}
    trained_by = {"family": job.family, "hp": dataclasses.asdict(job.hp), "settings": shaping,
                  "distribution": dist.identity(), "data": ctx.datasets.spec.version, "trained_on": job.trained_on}
    members, records = ensemble.train_members(count, fit, load, ctx.state.run_dir, trained_by)
    if dist.kind == "multi_worker":
        # Evaluate and export a single-device copy: it runs on this machine alone, with no
        # collective the other workers would have to join (reading the weights is the last).
        members = [distribute.local_copy(model) for model in members]
    model = ensemble.combine(members)
    digest = distribute.weights_digest(model)
    print(f"Final weights sha256 {digest}", flush=True)
    first = records[0]
    return _Trained(model, job.family, job.hp, job.settings, first["epochs_run"], first["steps_run"],
                    any(r["resumed"] or r.get("loaded", False) for r in records), job.trained_on,
                    sum(spec.num_examples[role] for role in job.trained_on), job.validation,
                    digest, logs["run"], first["recovery"], input_sharding=first["input_sharding"],
                    members=records if len(records) > 1 else None)


def _stage_name(member: int, count: int) -> str:
    """The training stage's name in the timing: "train", or "train member 2" of an ensemble."""
    return "train" if count == 1 else f"train member {member + 1}"


def _fit_member(ctx: _Run, job: _Training, model: keras.Model, *, member: int,
                run_log: tensorboard_logs.RunLog) -> dict:
    """Fit one model (one member of an ensemble, with its own seed for the data order and the
    augmentation); returns its record for the metadata."""
    config, dist, state, hp = ctx.config, ctx.dist, ctx.state, job.hp
    seed = config.seed + member
    backup = state.run_dir / runstate.key("train", {"family": job.family, "hp": dataclasses.asdict(hp),
                                                     "distribution": dist.identity(),
                                                     **({"member": member} if member else {})})
    resumed = backup.exists()
    if resumed:
        print(f"Resuming interrupted run {state.run_id} from its last saved epoch ({backup}).", flush=True)
    fit = multiworker.fit if dist.kind == "multi_worker" else training.fit  # keras-team/keras#20585
    augmentation = models.augmentation(job.family, hp, seed, kind=config.kind)
    # Each epoch's order and shifts are fixed by (seed, epoch): a resumed run starts its stream at
    # the epoch its backup restores, and trains the batches an uninterrupted run would.
    def stream(first_epoch: int):
        return ctx.datasets.batched(job.train, batch_size=dist.global_batch(hp.batch_size), seed=seed, training=True,
                                    first_epoch=first_epoch, end_epoch=job.settings.epochs,
                                    per_batch=augmentation.per_batch(seed))

    # Multi-worker: the loop starts the stream once every worker knows the chief's restored epoch.
    train_input = stream if dist.kind == "multi_worker" else stream(training.resumed_epoch(backup))
    input_sharding = None
    # A folder's files, or text and tables read per worker: each worker its own share.
    if dist.kind == "multi_worker" and job.trained_on == ["train"]:
        train_input, input_sharding = sharding.training_input(
            ctx.datasets, train_input, examples=job.train, workers=dist.workers, replicas=dist.replicas,
            per_replica_batch=hp.batch_size, steps_per_epoch=job.settings.steps_per_epoch, seed=seed,
            augmentation=augmentation, epochs=job.settings.epochs)
    validation = job.validation
    result = fit(model, train_input, validation, job.settings,
                 logdir=ctx.logdir if not member else ctx.logdir / f"member{member}", backup_dir=backup,
                 extra_callbacks=run_log.callbacks(validation) if not member else [])
    return {"seed": seed, "epochs_run": training.epochs_completed(result),
            # Optimizer steps over the whole run, resumed parts included: the schedule's position.
            "steps_run": int(model.optimizer.iterations.numpy()), "resumed": resumed,
            "recovery": training.recovery_of(result), "input_sharding": input_sharding}


def _distribution(ctx: _Run, trained: _Trained) -> dict:
    """metadata.json's "distribution": the strategy, the final weights' digest, each worker's input."""
    return {**ctx.dist.to_json(trained.hp.batch_size, trained.hp.learning_rate),
            "weights_sha256": trained.weights_sha256,
            **({"input": trained.input_sharding} if trained.input_sharding else {})}


def _evaluate_and_publish(ctx: _Run, trained: _Trained) -> PipelineResult:
    """Export, score the test split through the exported function (its figures are the ones
    recorded), gate against the best published version of the same data, write the test
    summaries for TensorBoard, then publish (or hold back) the verified export with its
    metadata.json (which says how long each stage took), and write the run summary."""
    config, datasets, state, times = ctx.config, ctx.datasets, ctx.state, ctx.times
    spec = datasets.spec
    with times.stage("evaluate"):
        test_images, test_labels = evaluation.collect(
            datasets.batched(datasets.test, batch_size=1000, seed=config.seed, training=False))
        for i, member in enumerate(trained.members or []):  # each alone, to show what averaging added
            member["test_accuracy"] = evaluation.evaluate(trained.model.get_layer(f"member{i}"), test_images,
                                                          test_labels, spec.class_names).accuracy
        validation = _validation_metrics(ctx, trained)
    tflite = quantize.settings_for(config, datasets.train, spec.input)  # None without --export-tflite
    with export.staged(trained.model, spec.input, ctx.export_base, test_images, test_labels,
                       class_names=spec.class_names, times=times) as candidate:
        test_eval = candidate.evaluation  # the figures of the exported function, as it will serve
        metadata = _metadata(ctx, trained, validation=validation, test_eval=test_eval)
        _kind_metrics(ctx, metadata, test_labels, test_eval)
        ctx.logdir.mkdir(parents=True, exist_ok=True)
        (ctx.logdir / "metrics.json").write_text(json.dumps(metadata["metrics"], indent=2))
        if tflite is not None:  # raises quantize.QuantizationError past the allowed drop
            with times.stage("tflite"):
                metadata["export"] = {"tflite": quantize.write_verified(tflite, candidate.path, test_images,
                                                                        test_labels, candidate.verified_accuracy)}
        with times.stage("gate"):
            decision = _gate(ctx, candidate, test_images, test_labels, test_eval)
        metadata["gate"] = decision.to_json()
        # Text and table samples rank the mistakes by confidence: they get the probabilities.
        shown = test_eval.predictions if config.kind == "image" else test_eval.probabilities
        trained.run_log.write_test(test_images, test_labels, shown, metadata, model=trained.model, times=times)
        metadata["timing"] = times.to_json()  # up to now: the rest takes milliseconds
        path, metadata_path = _publish_or_hold(candidate, metadata, decision, state.run_id)
    trained.run_log.write_summary(metadata, path)
    ensemble.discard(state.run_dir)  # the members are in the export now
    state.finish()  # the next run of this command starts anew
    result = PipelineResult(state.run_id, path, metadata_path, ctx.logdir, test_eval.accuracy, metadata)
    if not decision.publish:
        raise HeldBack(decision, path, result)
    return result


def _publish_or_hold(candidate: export.Candidate, metadata: dict, decision: gate.Decision,
                     run_id: str) -> tuple[Path, Path]:
    """Publish the candidate as the next version, or keep it among the held-back candidates;
    either way with its metadata.json. Returns the version's folder and its metadata.json."""
    if decision.publish:
        result = export.publish(candidate, metadata)
        return result.path, result.metadata_path
    path = export.hold(candidate, metadata, run_id)
    return path, path / "metadata.json"


def _kind_metrics(ctx: _Run, metadata: dict, test_labels, test_eval) -> None:
    """Text and tables: the metrics beside accuracy for imbalanced classes (per-class recall,
    macro F1, ROC AUC for two classes) in metadata.json's test metrics; tables: the gradient-
    boosted baseline on the same splits (`baseline`), unless --no-baseline."""
    config, spec = ctx.config, ctx.datasets.spec
    if config.kind == "image":
        return
    metadata["metrics"]["test"].update(evaluation.class_metrics(test_labels, test_eval.probabilities,
                                                                spec.class_names))
    if config.kind == "table":
        metadata["training"]["class_weight"] = config.table.class_weight
        if config.table.baseline:
            from tfpipeline.report import baseline

            with ctx.times.stage("baseline"):
                metadata["baseline"] = baseline.for_datasets(ctx.datasets, seed=config.seed).to_json()
            trees = metadata["baseline"]
            sample = ("" if trees["num_train"] == trees["train_of"] else f", trained on {trees['num_train']:,} "
                      f"of {trees['train_of']:,} training rows: {trees['train_rule']}")
            print(f"Baseline ({trees['model']}, same splits{sample}): test accuracy {trees['accuracy']:.2%}; "
                  f"this model: {test_eval.accuracy:.2%}.", flush=True)


def _gate(ctx: _Run, candidate, test_examples, test_labels, test_eval) -> gate.Decision:
    """The promotion gate's decision on the staged candidate, printed; a folder version also
    records the files it trained on, which later versions must not be scored on."""
    config, spec = ctx.config, ctx.datasets.spec
    split = _gate_split(ctx.datasets)
    decision = gate.decide(ctx.export_base, test_examples, test_labels, spec.class_names, test_eval, spec=spec.input,
                           split=split, max_regression=config.max_regression,
                           confidence=config.gate_confidence, force=config.force_publish)
    if split.trained_keys is not None:
        gate.write_trained_on(candidate.path, split.trained_keys)
    print(decision.message(), flush=True)
    return decision


def _gate_split(datasets: data_lib.Datasets) -> gate.Split:
    """What the gate needs of this run's data: its identity and a folder's file keys (the model
    trained on train and chose its epochs, or its search, on validation)."""
    keys = datasets.file_keys
    # Text and table loaders leave `identity` empty: their record implies it (kind, name, data digest).
    identity = datasets.spec.identity or data_lib.split_identity(datasets.spec.to_json())
    return gate.Split(identity, keys and keys["test"], keys and keys["train"] + keys["validation"])


def _validation_metrics(ctx: _Run, trained: _Trained) -> dict:
    """The validation accuracy and loss: the chosen trial's after a search, else the model's."""
    found = ctx.found
    if found:
        return {"accuracy": found.best["score"], "loss": found.best["val_loss"],
                "source": f"search: trial {found.best['trial_id']} before the training on train + validation"}
    val_images, val_labels = evaluation.collect(trained.validation)
    val_eval = evaluation.evaluate(trained.model, val_images, val_labels, ctx.datasets.spec.class_names)
    return {"accuracy": val_eval.accuracy, "loss": val_eval.loss}


def _metadata(ctx: _Run, trained: _Trained, *, validation: dict, test_eval) -> dict:
    """metadata.json: what was trained on what, how, how well, and where everything went."""
    config, started = ctx.config, ctx.started
    metadata = {
        "dataset": ctx.datasets.spec.to_json(),
        "model": {"family": trained.family, "hyperparameters": dataclasses.asdict(trained.hp),
                  "parameters": trained.model.count_params(), "members": len(trained.members or [None]),
                  **({"ensemble": trained.members} if trained.members else {})},
        "training": {"epochs_requested": trained.hp.epochs, "epochs_run": trained.epochs_run,
                     "steps_per_epoch": trained.settings.steps_per_epoch, "steps_run": trained.steps_run,
                     "trained_on": trained.trained_on, "examples": trained.examples, "seed": config.seed,
                     "deterministic": config.deterministic, "quick": config.quick, "resumed": trained.resumed,
                     "optimizer": training.optimizer_record(trained.settings), "recovery": trained.recovery},
        "distribution": _distribution(ctx, trained),
        "metrics": {"validation": validation, "test": test_eval.to_json()},
        "run": {"id": ctx.state.run_id, "logdir": str(ctx.logdir), **provenance(),
                "started": started[1].isoformat(timespec="seconds"),
                "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "wall_seconds": round(time.time() - started[0], 1)},
    }
    if ctx.found:
        metadata["search"] = ctx.found.to_json()
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
