"""What a run writes for TensorBoard beyond Keras's own callback.

Layout of one run, `<logdir>/<dataset>/<run-id>/`:

    train/, validation/   Keras's TensorBoard callback: epoch scalars (epoch_loss,
                          epoch_accuracy, epoch_learning_rate), the graph, weight
                          histograms, profiler traces (train/plugins/profile/)
    test/                 this module, at the end: the exported model's epoch_accuracy and
                          epoch_loss on the test split (Keras's tag names, so the Scalars
                          charts show test next to train and validation), and images:
                          the input spec's samples (for images: predictions, mistakes),
                          confusion_matrix, and the spec's attributions (for images:
                          attributions and attributions_mistakes, tfpipeline/inputs/image_report.py)
    validation/           also, with --image-freq N, the same images every N epochs
    (the run folder)      the HParams session (the run's hyperparameters) and a Markdown
                          run summary (text tag run_summary)
    trials/<id>/...       a search's trials (tfpipeline/tuning/): train/, validation/
                          and each trial's own HParams session, named <dataset>/<run-id>/trials/<id>

HParams: every run is a session (`hp.hparams` in the run folder). No experiment summary
(`hp.hparams_config`) is written on purpose: TensorBoard uses the first one it finds and
then ignores hyperparameters it does not declare, so runs of different families (each with
its own hyperparameters) and tuner trials could not share one table. Without it, TensorBoard
builds the experiment from all sessions: the union of their hyperparameters, and as metrics
every scalar tag under a session, named (group = sub-folder, tag) and sorted by tag. A run
and a trial therefore share the column validation.epoch_accuracy; runs add test.epoch_accuracy
and test.epoch_loss, which sort among the first five metrics the dashboard shows by default.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont
from tensorboard.plugins.hparams import api as hp_api

from tfpipeline.errors import UserError
from tfpipeline.inputs import InputSpec
from tfpipeline.report import evaluation, timing

# --- hyperparameters ------------------------------------------------------------------

def _scalar(value: Any) -> bool | int | float | str:
    """HParams values must be bool, number or string; tuples like filters=(32, 64) become "32,64"."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def run_hparams(config, hp, parameters: int) -> dict[str, bool | int | float | str]:
    """One flat row for the HParams table.

    The family's own hyperparameters keep their plain names (dropout, learning_rate,
    batch_size...): the names shared by families, and by tuner trials that use the same
    names, line up in one column; a family's other hyperparameters are blank for the rest.
    """
    row = {
        "family": config.model,
        "dataset": config.dataset,
        "seed": config.seed,
        "quick": config.quick,
        "validation_fraction": config.validation_fraction,
        "parameters": int(parameters),
        # Optimizer options: 0 when off (HParams values cannot be empty), so the table can
        # filter and sort runs by them.
        **{name: float(getattr(config, name, None) or 0.0) for name in ("clipnorm", "clipvalue", "weight_decay")},
    }
    row.update({name: _scalar(value) for name, value in dataclasses.asdict(hp).items()})
    return row


# --- pictures ---------------------------------------------------------------------------

def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: no system fonts needed


def _short(name: str, limit: int = 11) -> str:
    # ASCII only: the bundled font lacks symbols such as arrows and the ellipsis.
    return name if len(name) <= limit else name[: limit - 1] + "."


def confusion_matrix_image(matrix, class_names) -> np.ndarray:
    """Rows: true class, columns: predicted class; each cell shaded by its share of the row
    (so rare classes read as clearly as common ones) and labelled with its count."""
    matrix = np.asarray(matrix, dtype=np.int64)
    n = matrix.shape[0]
    cell = int(np.clip(720 // max(n, 1), 12, 44))  # 10 classes: 44 px; 100 classes: 12 px
    show_counts = cell >= 24
    label_w = 90 if max(len(str(c)) for c in class_names) > 3 else 40
    top, left = 50, label_w + 24
    size = (max(left + n * cell + 10, 320), top + n * cell + 10)  # 320: room for the header line
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    font, small = _font(13), _font(max(8, min(12, cell // 3)))
    draw.text((4, 6), "rows: true class    columns: predicted class", fill="black", font=font)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    for j in range(n):
        draw.text((left + j * cell + 3, top - 18), _short(str(class_names[j]), max(2, cell // 7)),
                  fill="black", font=small)
    for i in range(n):
        draw.text((4, top + i * cell + cell // 3), _short(str(class_names[i]), 12), fill="black", font=small)
        for j in range(n):
            x0, y0 = left + j * cell, top + i * cell
            # Diagonal (right) in blue, errors in red, both darker with a larger share.
            strength = float(share[i, j]) if i == j else min(1.0, float(share[i, j]) * 5)
            base = (30, 90, 200) if i == j else (200, 30, 30)
            fill = tuple(int(255 - (255 - c) * strength) for c in base)
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=fill, outline=(225, 225, 225))
            if show_counts and matrix[i, j]:
                text_color = "white" if strength > 0.55 else "black"
                draw.text((x0 + 3, y0 + cell // 3), str(matrix[i, j]), fill=text_color, font=small)
    return np.asarray(canvas)


def write_op_graph(model: keras.Model, logdir: Path) -> None:
    """The forward pass as TensorFlow ops (what the exported model computes) as `logdir`'s run graph.

    Keras 3 writes only the layer-level "keras" graph, and with profiling an empty batch_N
    graph, which the Graphs page opened on ("The graph is empty"). A run graph comes first.
    """
    # The model's inputs as it takes them: one tensor (images, text) or a dict (a table's columns).
    spec = keras.tree.map_structure(lambda t: tf.TensorSpec((None, *t.shape[1:]), t.dtype), model.input)
    # model.call, not model(...): without the model's own name scope around everything, the
    # layers are the top-level boxes of the graph instead of one collapsed "cnn_1" node.
    graph = tf.function(lambda inputs: model.call(inputs, training=False)).get_concrete_function(spec).graph
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        tf.summary.graph(graph)
    writer.close()


def _predict(model: keras.Model, examples) -> np.ndarray:
    return np.asarray(model.predict(examples, batch_size=1000, verbose=0)).argmax(axis=-1)


def write_prediction_images(spec: InputSpec, split: str, examples, labels, predictions, class_names, *,
                            step: int) -> None:
    """The input spec's samples with their predictions (for images: `predictions` and
    `mistakes`) and `confusion_matrix`, to the default writer (the split's own folder, so the
    tags are the same for every split)."""
    spec.log_samples(split, examples, labels, predictions, class_names, step)
    predictions = np.asarray(predictions)
    classes = predictions.argmax(axis=-1) if predictions.ndim == 2 else predictions  # probabilities, or classes
    matrix = evaluation.confusion_matrix(labels, classes, len(class_names))
    tf.summary.image("confusion_matrix", confusion_matrix_image(matrix, class_names)[np.newaxis], step=step,
                     description=f"Confusion matrix on the {len(labels):,} {split} examples: rows true, "
                                 "columns predicted.")


class PredictionImages(keras.callbacks.Callback):
    """Every `freq` epochs: prediction grids and confusion matrix on the validation split.

    Validation, not test, during training: the test split stays unseen until the end.
    """

    def __init__(self, logdir: Path, validation: tf.data.Dataset, class_names, freq: int, spec: InputSpec):
        super().__init__()
        self._logdir, self._validation, self._class_names, self._freq = logdir, validation, class_names, freq
        self._spec = spec
        self._writer = self._data = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self._freq:
            return
        if self._data is None:  # read once, on first use
            self._data = evaluation.collect(self._validation)
            # Beside Keras's own validation event file: TensorBoard reads every file in a run folder.
            self._writer = tf.summary.create_file_writer(str(self._logdir / "validation"))
        examples, labels = self._data
        with self._writer.as_default():
            write_prediction_images(self._spec, "validation", examples, labels, _predict(self.model, examples),
                                    self._class_names, step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


class ProfileStepMarkers(keras.callbacks.Callback):
    """Marks each profiled batch as a training step in the trace.

    Keras 3 wraps profiled batches in a trace event the profiler does not count as a step,
    so the profile's overview page reports "No step marker observed" and all times as 0.
    A `Trace("train", step_num=..., _r=1)` is the marker TensorFlow's profiling guide uses.
    Counting matches Keras's TensorBoard callback (training batches from 1, across epochs).
    """

    def __init__(self, batches: tuple[int, int]):
        super().__init__()
        self._start, self._end = batches
        self._batch, self._trace = 0, None

    def on_train_begin(self, logs=None):
        self._batch = 0

    def on_train_batch_begin(self, batch, logs=None):
        self._batch += 1
        if self._start <= self._batch <= self._end:
            self._trace = tf.profiler.experimental.Trace("train", step_num=self._batch, _r=1)
            self._trace.__enter__()

    def on_train_batch_end(self, batch, logs=None):
        if self._trace is not None:
            self._trace.__exit__(None, None, None)
            self._trace = None


# --- text -----------------------------------------------------------------------------

def command_line() -> str:
    """How this process was started, as a shell command (`python -m pipelines.mnist ...`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    program = ["python", "-m", spec.name] if spec is not None and spec.name else sys.argv[:1]
    return shlex.join(program + sys.argv[1:])


def _table(rows: dict, header=("", "")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {key} | {str(value).replace('|', '/')} |" for key, value in rows.items()]
    return "\n".join(lines)


def run_summary(config, metadata: dict, export_path) -> str:
    """Markdown: command, result, model, data, versions; what a reviewer asks first."""
    test = metadata["metrics"]["test"]
    val = metadata["metrics"]["validation"]
    run = metadata["run"]
    data = metadata["dataset"]
    versions = {k: run.get(k) for k in ("tensorflow", "keras", "tensorflow_datasets", "python", "git_commit", "host")}
    versions["tensorboard"] = _tensorboard_version()
    config_json = json.dumps(dataclasses.asdict(config), indent=2, default=str)
    return "\n\n".join([
        f"## Run {run['id']}",
        f"**Command**\n\n    {command_line()}",
        "**Result**\n\n" + _table({
            "test accuracy": f"{test['accuracy']:.4f}",
            "test loss": f"{test['loss']:.4f}",
            "validation accuracy": f"{val['accuracy']:.4f}",
            "validation loss": f"{val['loss']:.4f}",
            "exported model": Path(export_path).resolve(),
            "epochs run": f"{metadata['training']['epochs_run']} of {metadata['training']['epochs_requested']}",
            "wall time": f"{run['wall_seconds']} s",
            "started / finished": f"{run['started']} / {run['finished']}",
        }, header=("result", "value")),
        "**Model**\n\n" + _table({
            "family": metadata["model"]["family"],
            "parameters": f"{metadata['model']['parameters']:,}",
            **metadata["model"]["hyperparameters"],
        }, header=("model", "value")),
        "**Data**\n\n" + _table({
            "dataset": f"{data['name']} {data['version']}",
            **{f"{role} examples": f"{count:,} ({data['splits'][role]})"
               for role, count in data["num_examples"].items()},
        }, header=("data", "value")),
        *(["**Input**\n\n" + _table(input_rows(metadata), header=("input", "value"))]
          if input_rows(metadata) else []),
        *(["**Where the time went**\n\n" + _table(timing.markdown_rows(metadata["timing"]),
                                                   header=("stage", "seconds"))]
          if metadata.get("timing") else []),
        "**Versions**\n\n" + _table(versions, header=("software", "version")),
        "**Configuration**\n\n" + "\n".join("    " + line for line in config_json.splitlines()),
    ])


def write_class_metrics(metadata: dict, step: int) -> None:
    """Text and tables: macro F1, ROC AUC (two classes), recall per class and the gradient-boosted
    baseline's accuracy, as test scalars beside the accuracy (to the default writer)."""
    test = metadata["metrics"]["test"]
    for name in ("macro_f1", "roc_auc"):
        if name in test:
            tf.summary.scalar(name, test[name], step=step)
    for class_name, recall in test.get("per_class_recall", {}).items():
        tf.summary.scalar(f"recall/{class_name}", recall, step=step)
    if "baseline" in metadata:
        tf.summary.scalar("baseline_accuracy", metadata["baseline"]["accuracy"], step=step,
                          description=f"{metadata['baseline']['model']} on the same splits")


def input_rows(metadata: dict) -> dict:
    """The run summary's input rows: what a text or table input was chosen to be."""
    data, test = metadata["dataset"], metadata["metrics"]["test"]
    record, rows = data["input"], {}
    if record.get("kind") == "text":
        rows["vocabulary size"] = f"{record['vocabulary_size']:,} words ({record['ngram_vocabulary_size']:,} n-grams)"
        rows["sequence length"] = (f"{record['sequence_length']} words "
                                   f"({record['chosen'].get('truncated_documents', 0):,} training documents truncated)")
        rows["skipped files"] = json.dumps(data["source"].get("skipped", {}).get("by_reason", {}))
    elif record.get("kind") == "table":
        for column in record["columns"]:
            rows[f"column {column['name']}"] = f"{column['role']} ({column['detected']}, {column['dtype']})"
        rows["skipped rows"] = data["source"].get("skipped", {}).get("count", 0)
    for name in ("macro_f1", "roc_auc"):
        if name in test:
            rows[f"test {name.replace('_', ' ')}"] = f"{test[name]:.4f}"
    if "per_class_recall" in test:
        rows["test recall per class"] = ", ".join(f"{k} {v:.3f}" for k, v in test["per_class_recall"].items())
    if "baseline" in metadata:
        rows["baseline accuracy"] = f"{metadata['baseline']['accuracy']:.4f} ({metadata['baseline']['model']})"
    return rows


def _tensorboard_version() -> str:
    from tensorboard import version

    return version.VERSION


# --- the hook pipeline.run calls -------------------------------------------------------

class RunLog:
    """The run folder's own summaries: create it when the model exists, before `fit`.

    Writes the HParams session at once, so an unfinished or failed run still shows up in
    the HParams table (with blank metrics); `finish` adds everything known at the end.
    """

    def __init__(self, logdir, config, hp, model: keras.Model, class_names, total_steps: int, *,
                 spec: InputSpec):
        if config.profile_batches and config.profile_batches[0] > total_steps:
            # Keras would silently never start the profiler.
            raise UserError(
                f"--profile-batches {config.profile_batches[0]},{config.profile_batches[1]} starts after the "
                f"last training batch: this run trains {total_steps} batches."
            )
        self.logdir = Path(logdir)
        self.config = config
        self.class_names = tuple(class_names)
        self.spec = spec
        self.writer = tf.summary.create_file_writer(str(self.logdir))
        with self.writer.as_default():
            # trial_id names the session group: one row per run even when two runs share
            # every hyperparameter (otherwise TensorBoard merges them into one row).
            hp_api.hparams(run_hparams(config, hp, model.count_params()),
                           trial_id=f"{config.dataset}/{self.logdir.name}")
        self.writer.flush()
        write_op_graph(model, self.logdir / "train")

    def callbacks(self, validation: tf.data.Dataset) -> list[keras.callbacks.Callback]:
        callbacks: list[keras.callbacks.Callback] = []
        if self.config.profile_batches:
            callbacks.append(ProfileStepMarkers(self.config.profile_batches))
        if self.config.image_freq:
            callbacks.append(PredictionImages(self.logdir, validation, self.class_names, self.config.image_freq,
                                              self.spec))
        return callbacks

    def write_test(self, test_examples, test_labels, test_predictions, metadata: dict,
                   model: keras.Model | None = None, *, times: timing.StageTimes | None = None) -> None:
        """The exported model's test scalars and images, its attributions and embeddings: what
        takes time, written before the version is published so that metadata.json can say how long.

        Args:
            test_examples, test_labels: the test split.
            test_predictions: the exported model's predicted classes on it, or its probabilities
                (from the evaluation, so the test set is not run through the model a second time).
            metadata: the run's metadata.json contents.
            model: the exported model, for the input spec's attributions.
            times: where the seconds of the summaries, attributions and embeddings go.
        """
        times = times or timing.StageTimes()
        step = _last_step(metadata)
        test = metadata["metrics"]["test"]
        test_writer = tf.summary.create_file_writer(str(self.logdir / "test"))
        with test_writer.as_default():
            with times.stage("tensorboard: test summaries"):
                # The exported model on the test split, as one more point at the last epoch.
                tf.summary.scalar("epoch_accuracy", test["accuracy"], step=step)
                tf.summary.scalar("epoch_loss", test["loss"], step=step)
                write_class_metrics(metadata, step)
                write_prediction_images(self.spec, "test", test_examples, test_labels, test_predictions,
                                        self.class_names, step=step)
            if model is not None:
                with times.stage("tensorboard: attributions"):
                    self.spec.log_attributions(model, test_examples, test_labels, self.class_names, step)
        test_writer.close()
        if model is not None:
            with times.stage("tensorboard: embeddings"):
                self.spec.log_embeddings(model, self.logdir)

    def write_summary(self, metadata: dict, export_path) -> None:
        """The run summary text (where the version went, the timing), last; closes the run's writer."""
        with self.writer.as_default():
            tf.summary.text("run_summary", run_summary(self.config, metadata, export_path),
                            step=_last_step(metadata))
        self.writer.close()


def _last_step(metadata: dict) -> int:
    """The step the end-of-run summaries are written at: the last epoch, as Keras counts."""
    return max(0, metadata["training"]["epochs_run"] - 1)
