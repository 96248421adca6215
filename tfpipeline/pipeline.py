"""The end-to-end run: data → model → train → evaluate → verified export.

`run(PipelineConfig(...))` is what `python -m pipelines.mnist` calls and what tests call
directly. Each stage is a function in its own module; this one only wires them together
and records where everything went.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
import tensorflow_datasets as tfds

from tfpipeline import data as data_lib
from tfpipeline import distribute, evaluation, export, models, multiworker, tensorboard_logs, training
from tfpipeline.errors import UserError


@dataclasses.dataclass
class PipelineConfig:
    dataset: str = "mnist"
    model: str = "cnn"
    # None: the model family's own default (see tfpipeline/models/<family>.py).
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)  # architecture overrides
    seed: int = 42
    deterministic: bool = False
    validation_fraction: float = 0.1
    # The model's input (see tfpipeline/folders.py for the defaults from the data) and how many
    # bytes of decoded examples may stay in memory (None: a quarter of the RAM).
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    cache_budget: int | None = None
    data_dir: str | None = None
    manual_dir: str | None = None
    export_dir: str = "exported"
    logdir: str = "runs"
    work_dir: str = "work"
    run_name: str | None = None
    quick: bool = False
    verbose: int | None = None
    # TensorBoard extras (see tfpipeline/tensorboard_logs.py).
    histogram_freq: int = 1  # weight histograms every N epochs; 0: none
    image_freq: int = 0  # validation prediction images every N epochs; 0: only the test images at the end
    profile_batches: tuple[int, int] | None = None  # trace training batches START..END (1-based)
    # Distribution (see tfpipeline/distribute.py); batch_size is per replica.
    strategy: str = "auto"  # auto, default, mirrored or multi_worker
    cpu_devices: int | None = None  # split the host CPU into N logical devices (for mirrored)
    lr_scaling: str = "linear"  # how the peak learning rate grows with the replicas
    # Hyperparameter search first (tfpipeline/tuning.py: a tuning.SearchSettings); None: train
    # the family's defaults. model may then be "auto" (the family is searched too).
    search: Any = None

    @property
    def dataset_name(self) -> str:
        """What exports, logs and checkpoints are filed under: a folder's base name or the TFDS name."""
        return data_lib.dataset_name(self.dataset)

    def validate(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise UserError(f"--{name.replace('_', '-')} must be a positive whole number, got {value}.")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise UserError(f"--learning-rate must be a positive number, got {self.learning_rate}.")
        models.family(self.model)  # unknown family → UserError
        for name in ("histogram_freq", "image_freq"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise UserError(f"--{name.replace('_', '-')} must be 0 or a positive whole number, got {value}.")
        if self.cpu_devices is not None and (not isinstance(self.cpu_devices, int) or self.cpu_devices <= 0):
            raise UserError(f"--cpu-devices must be a positive whole number, got {self.cpu_devices}.")
        if self.profile_batches:
            try:
                tensorboard_logs.check_batch_range(self.profile_batches)
            except ValueError as exc:
                raise UserError(f"--profile-batches {exc}.") from None


@dataclasses.dataclass
class PipelineResult:
    run_id: str
    export_path: Path | None  # None on a worker that is not the chief: it exports nothing
    metadata_path: Path | None
    logdir: Path
    test_accuracy: float
    metadata: dict


def family_hyperparams(config: PipelineConfig):
    overrides = dict(config.hparams)
    for key in ("epochs", "batch_size", "learning_rate"):
        if getattr(config, key) is not None:
            overrides[key] = getattr(config, key)
    hp = models.hyperparams(config.model, overrides)
    if config.quick and config.epochs is None:  # an explicit --epochs still counts (e.g. resume tests)
        hp = dataclasses.replace(hp, epochs=1)
    return hp


def _config_key(config: PipelineConfig, hp, dist: distribute.Distribution | None = None) -> str:
    """Identifies "the same command" so a re-run after a crash finds its backup."""
    identity = {
        "dataset": config.dataset,
        "model": config.model,
        "hp": dataclasses.asdict(hp),
        "seed": config.seed,
        "quick": config.quick,
        "validation_fraction": config.validation_fraction,
    }
    for key in ("image_size", "channels"):  # only when given: older runs keep their keys
        if getattr(config, key) is not None:
            identity[key] = getattr(config, key)
    if dist is not None and dist.kind != "default":  # another global batch: another run
        identity["distribution"] = dist.identity()
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return f"{config.model}-{digest[:10]}"


def _run_id(config: PipelineConfig, state_dir: Path) -> tuple[str, bool]:
    """Readable run id (time + family); an interrupted run being resumed keeps its id."""
    state_file = state_dir / "run.json"
    if state_file.exists() and (state_dir / "backup").exists():
        return json.loads(state_file.read_text())["run_id"], True
    run_id = config.run_name or f"{dt.datetime.now():%Y%m%d-%H%M%S}-{config.model}"
    state_dir.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"run_id": run_id}))
    return run_id, False


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
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


def run(config: PipelineConfig) -> PipelineResult:
    if config.search is not None:  # search, then retrain the best: a stage of its own
        from tfpipeline import tuning

        return tuning.run(config)
    started = time.time()
    started_at = dt.datetime.now(dt.timezone.utc)
    config.validate()
    hp = family_hyperparams(config)
    # Before anything else touches TensorFlow: --cpu-devices and MultiWorkerMirrored must.
    dist = distribute.setup(config.strategy, cpu_devices=config.cpu_devices, lr_scaling=config.lr_scaling)
    print(dist.describe(hp.batch_size, hp.learning_rate), flush=True)
    # dist.writable: the real path on the chief (or alone), a temporary one on other workers.
    export_base = export.ensure_writable(dist.writable(Path(config.export_dir) / config.dataset_name))

    keras.utils.set_random_seed(config.seed)  # Python, NumPy and TF seeds: same weights, same order
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()

    datasets = data_lib.load(
        config.dataset,
        data_dir=config.data_dir,
        manual_dir=config.manual_dir,
        validation_fraction=config.validation_fraction,
        quick=config.quick,
        image_size=config.image_size,
        channels=config.channels,
        cache_budget=config.cache_budget,
        work_dir=config.work_dir,
        seed=config.seed,
    )
    spec = datasets.spec

    def pipeline(ds, training_split, role):
        # Data order is always deterministic (cheap here); --deterministic adds op determinism.
        # Batches of the global batch size; a strategy splits each among its replicas.
        return data_lib.make_pipeline(
            ds, batch_size=dist.global_batch(hp.batch_size), training=training_split, seed=config.seed,
            **datasets.pipeline_options(role),
        )

    train_ds = pipeline(datasets.train, True, "train")
    val_ds = pipeline(datasets.validation, False, "validation")
    test_images, test_labels = evaluation.collect(pipeline(datasets.test, False, "test"))

    state_dir = dist.writable(Path(config.work_dir) / config.dataset_name / _config_key(config, hp, dist))
    run_id, resumed = _run_id(config, state_dir)
    logdir = dist.writable(Path(config.logdir) / config.dataset_name / run_id)
    if resumed:
        print(f"Resuming interrupted run {run_id} from its last saved epoch ({state_dir / 'backup'}).")

    # Global batch and scaled learning rate: steps per epoch and the schedule follow from them.
    global_hp = dataclasses.replace(
        hp, batch_size=dist.global_batch(hp.batch_size), learning_rate=dist.learning_rate(hp.learning_rate)
    )
    settings = training.settings_for(
        global_hp, spec.num_examples["train"], verbose=config.verbose,
        histogram_freq=config.histogram_freq, profile_batches=config.profile_batches,
    )
    with dist.strategy.scope():  # model, optimizer and metric variables: one copy per replica
        model = models.build(config.model, spec.input_shape, spec.num_classes, hp)
        training.compile_model(model, settings)
    # HParams session now (a failed run still gets its row); images and summary at the end.
    run_log = tensorboard_logs.RunLog(
        logdir, config, hp, model, spec.class_names, settings.epochs * settings.steps_per_epoch
    )
    fit = multiworker.fit if dist.kind == "multi_worker" else training.fit  # keras-team/keras#20585
    history = fit(
        model, train_ds, val_ds, settings, logdir=logdir, backup_dir=state_dir / "backup",
        extra_callbacks=run_log.callbacks(val_ds),
    )
    epochs_run = training.epochs_completed(history)
    # Optimizer steps over the whole run, resumed parts included: the schedule's position.
    steps_run = int(model.optimizer.iterations.numpy())
    if dist.kind == "multi_worker":
        # Evaluate and export a single-device copy: it runs on this machine alone, with no
        # collective the other workers would have to join (reading the weights is the last).
        model = distribute.local_copy(model)
    weights_sha256 = distribute.weights_digest(model)
    print(f"Final weights sha256 {weights_sha256}", flush=True)
    if not dist.is_chief:
        return PipelineResult(run_id, None, None, logdir, float("nan"), {"distribution": dist.to_json(
            hp.batch_size, hp.learning_rate) | {"weights_sha256": weights_sha256, "worker": dist.worker_name}})

    val_images, val_labels = evaluation.collect(val_ds)
    val_eval = evaluation.evaluate(model, val_images, val_labels, spec.class_names)
    test_eval = evaluation.evaluate(model, test_images, test_labels, spec.class_names)
    metrics = {"validation": val_eval.to_json(), "test": test_eval.to_json()}
    logdir.mkdir(parents=True, exist_ok=True)
    (logdir / "metrics.json").write_text(json.dumps(metrics, indent=2))

    metadata = {
        "dataset": {"name": spec.name, "version": spec.version, "splits": spec.splits,
                    "num_examples": spec.num_examples, "class_names": list(spec.class_names),
                    "input_shape": list(spec.input_shape), **spec.source},
        "model": {"family": config.model, "hyperparameters": dataclasses.asdict(hp),
                  "parameters": model.count_params()},
        "training": {"epochs_requested": hp.epochs, "epochs_run": epochs_run,
                     "steps_per_epoch": settings.steps_per_epoch, "steps_run": steps_run, "seed": config.seed,
                     "deterministic": config.deterministic, "quick": config.quick,
                     "resumed": resumed},
        "distribution": {**dist.to_json(hp.batch_size, hp.learning_rate), "weights_sha256": weights_sha256},
        "metrics": {
            "validation": {"accuracy": val_eval.accuracy, "loss": val_eval.loss},
            "test": {"accuracy": test_eval.accuracy, "loss": test_eval.loss,
                     "per_class_accuracy": test_eval.per_class_accuracy,
                     "confusion_matrix": test_eval.confusion_matrix},
        },
        "run": {"id": run_id, "logdir": str(logdir), **provenance(),
                "started": started_at.isoformat(timespec="seconds"),
                "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "wall_seconds": round(time.time() - started, 1)},
    }
    result = export.export_verified(
        model, spec.input_shape, export_base, test_images, test_labels, test_eval.accuracy, metadata
    )
    run_log.finish(model, test_images, test_labels, metadata, result.path)
    return PipelineResult(
        run_id=run_id,
        export_path=result.path,
        metadata_path=result.metadata_path,
        logdir=logdir,
        test_accuracy=test_eval.accuracy,
        metadata=metadata,
    )
