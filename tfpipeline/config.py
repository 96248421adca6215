"""What a run is asked to do: `PipelineConfig` (and its `SearchSettings`), with the checks and
the one rule that decides whether a run searches first.

The command line (tfpipeline/cli.py) only turns flags into these dataclasses; tests and other
programs build them directly and get the same defaults and the same refusals.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from tfpipeline.errors import UserError

TUNERS = ("hyperband", "random", "bayesian")
#: The kinds of input a run trains on (`tfpipeline.inputs`); each has its own command (pipelines/).
KINDS = ("image", "text", "table")
CLASS_WEIGHTS = ("none", "balanced")
#: `--model`'s default per kind: the CNN for images; for text and tables the MLP (TF-IDF n-grams
#: and encoded columns), the field's strong first choice on both (docs/text.md, docs/tables.md).
DEFAULT_MODELS = {"image": "cnn", "text": "mlp", "table": "mlp"}

# The default search budget, sized for a laptop CPU (docs/tuning.md): trials train on a fifth
# of the training split (several times cheaper per epoch than the full data), then the chosen
# one is trained on all of it for the epochs its schedule spanned.
DEFAULT_MAX_EPOCHS, DEFAULT_FACTOR, DEFAULT_FRACTION = 15, 4, 0.2
# Images: Hyperband stops after its first bracket's opening, six trials of 4 epochs (the
# defaults first) and the best continued to 15; its later brackets, fresh 15-epoch trials,
# cost half the search and never won on MNIST, where 4 epochs rank the CNN's trials as 15 do.
# Text and tables keep the whole schedule: 4 epochs misranked the text MLP's defaults
# (docs/benchmarks.md, "The default run at a third of its cost").
DEFAULT_HYPERBAND_TRIALS = {"image": 7}
DEFAULT_TRIALS = 10  # random and bayesian
# The default fraction saves time on a large split; on a small one (a few hundred rows, a few
# thousand documents) a fifth leaves trials too few examples to rank hyperparameters by, so
# trials get at least this many (the whole split when it is smaller). MNIST's fifth is above it.
MIN_SEARCH_EXAMPLES = 10_000
# --quick: a smoke test of the search in seconds (its data is already a small subset).
QUICK_MAX_EPOCHS, QUICK_FRACTION, QUICK_TRIALS = 2, 1.0, 3

# The promotion gate (tfpipeline/export/gate.py) holds a new version back when a paired test shows,
# at this confidence, that it loses more than this many points of test accuracy. The margin is
# wide enough that another seed of the same recipe passes (short runs differ by about a point
# between seeds, docs/index.md); a model that has converged can be held to a tighter one.
DEFAULT_GATE_CONFIDENCE = 95.0
DEFAULT_MAX_REGRESSION = 1.0


@dataclasses.dataclass(frozen=True)
class SearchBudget:
    """What defines a search's size: `SearchSettings` with every default filled in."""

    tuner: str
    max_trials: int | None  # None: Hyperband's own schedule sets the number
    max_epochs: int
    factor: int | None  # Hyperband only
    search_fraction: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SearchSettings:
    """How the search stage searches. None fields take the budget defaults above.

    Args:
        tuner: "hyperband" (default), "random" or "bayesian".
        max_trials: Hyperband: a cap on its own schedule (for images with the default
            schedule `DEFAULT_HYPERBAND_TRIALS`, else none); the others: the number of trials.
        max_epochs: epochs of the longest trial.
        factor: Hyperband: each round keeps 1/factor of the trials, factor times longer.
        search_fraction: share of the training split the trials train on.
        families: with `model="auto"`, the families to choose from (default: all).
        overwrite: drop an unfinished search of the same command and start afresh.
    """

    tuner: str | None = None
    max_trials: int | None = None
    max_epochs: int | None = None
    factor: int | None = None
    search_fraction: float | None = None
    families: tuple[str, ...] | None = None
    overwrite: bool = False

    def customized(self) -> list[str]:
        """The settings given (as flag names): any of them asks for a search."""
        return [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default]

    def budget(self, quick: bool, kind: str) -> SearchBudget:
        """The settings with every default filled in: what defines the search's size (for
        data of `kind`, "image", "text" or "table": the default cap on Hyperband's trials
        depends on it, so it has no default)."""
        tuner = self.tuner or "hyperband"
        hyperband = tuner == "hyperband"
        max_epochs = self.max_epochs or (QUICK_MAX_EPOCHS if quick else DEFAULT_MAX_EPOCHS)
        factor = (self.factor or DEFAULT_FACTOR) if hyperband else None
        if not hyperband:
            default_trials = QUICK_TRIALS if quick else DEFAULT_TRIALS
        else:  # the cap fits the default schedule only; another one runs in full
            default_schedule = not quick and (max_epochs, factor) == (DEFAULT_MAX_EPOCHS, DEFAULT_FACTOR)
            default_trials = DEFAULT_HYPERBAND_TRIALS.get(kind) if default_schedule else None
        return SearchBudget(
            tuner=tuner,
            max_trials=self.max_trials or default_trials,
            max_epochs=max_epochs,
            factor=factor,
            search_fraction=self.fraction(quick),
        )

    def fraction(self, quick: bool) -> float:
        """The share of the training split the trials train on."""
        return self.search_fraction or (QUICK_FRACTION if quick else DEFAULT_FRACTION)

    def search_examples(self, num_train: int, quick: bool) -> int:
        """How many of `num_train` training examples the trials train on: the fraction, and with
        the default fraction at least `MIN_SEARCH_EXAMPLES` (all of a smaller split)."""
        share = max(1, round(num_train * self.fraction(quick)))
        return share if self.search_fraction is not None else max(share, min(num_train, MIN_SEARCH_EXAMPLES))

    def validate(self, kind: str) -> None:
        """Raises UserError naming the flag: a value out of range, or a family data of `kind` lacks."""
        if self.tuner is not None and self.tuner not in TUNERS:
            raise UserError(f"Unknown tuner {self.tuner!r}; choose one of {', '.join(TUNERS)}.")
        for name in ("max_trials", "max_epochs"):
            _check_positive_int(name, getattr(self, name))
        if self.factor is not None and (not isinstance(self.factor, int) or self.factor < 2):
            raise UserError(f"--factor must be a whole number of at least 2, got {self.factor}.")
        if self.factor is not None and (self.tuner or "hyperband") != "hyperband":
            raise UserError(f"--factor is Hyperband's; --tuner {self.tuner} has no rounds. Drop --factor.")
        if self.search_fraction is not None and not 0 < self.search_fraction <= 1:
            raise UserError(f"--search-fraction must be in (0, 1], got {self.search_fraction}.")
        if self.families is not None:
            from tfpipeline import models

            if not self.families:
                raise UserError("--families is empty; name at least one of " + ", ".join(models.families(kind))
                                + ".")
            for name in self.families:
                models.family(name, kind)


@dataclasses.dataclass
class TextOptions:
    """How a text dataset is read (`python -m pipelines.text`; tfpipeline/data/text.py).

    Args:
        text_column, label_column: a table's columns (None: detected when only one can be meant);
            ignored for folders of text files.
    """

    text_column: str | None = None
    label_column: str | None = None

    def given(self) -> list[str]:
        """The options set, as flag names."""
        return _given(self)


@dataclasses.dataclass
class TableOptions:
    """How a table is read and measured (`python -m pipelines.table`; tfpipeline/data/table.py).

    Args:
        label_column: the column to predict (required for a table).
        numeric, categorical, ignore: columns whose inferred type a flag overrides.
        class_weight: "balanced" weighs each class by n / (classes x its training count).
        baseline: train the gradient-boosted tree baseline on the same splits.
    """

    label_column: str | None = None
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    class_weight: str = "none"
    baseline: bool = True

    def flags(self) -> dict[str, tuple[str, ...]]:
        """The type overrides as `tfpipeline.data.table.load_table` takes them (role → columns)."""
        return {"numeric": self.numeric, "categorical": self.categorical, "ignored": self.ignore}

    def given(self) -> list[str]:
        """The options set, as flag names (`--no-baseline` for `baseline=False`)."""
        return [("--no-baseline" if flag == "--baseline" else flag) for flag in _given(self)]

    def validate(self) -> None:
        """Raises UserError: no --label-column, or an unknown --class-weight."""
        if not self.label_column:
            raise UserError("A table needs --label-column COLUMN: the column whose values are the classes.")
        if self.class_weight not in CLASS_WEIGHTS:
            raise UserError(f"--class-weight must be one of {', '.join(CLASS_WEIGHTS)}, got {self.class_weight!r}.")


def _given(options) -> list[str]:
    return [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(options)
            if getattr(options, f.name) != f.default]


@dataclasses.dataclass
class PipelineConfig:
    """One run of the pipeline: data → [search] → train → evaluate → gate → export.

    Args:
        dataset: TFDS dataset name, or a folder of images (tfpipeline/data/folders.py); for text
            and tables, a folder or a CSV/TSV file (docs/text.md, docs/tables.md).
        kind: the kind of input, one of `KINDS` ("image", the default; "text"; "table").
        text, table: how a text dataset or a table is read (`TextOptions`, `TableOptions`); only
            for that kind.
        model: model family (tfpipeline/models), or "auto" to search the family too. None: the
            kind's default (`DEFAULT_MODELS`).
        epochs, batch_size, learning_rate: None takes the family's own default (or, after a
            search, the best trial's); `batch_size` is per replica.
        hparams: overrides of the family's hyperparameters (pinned during a search).
        tune: search first? None (the default) searches unless the run is `quick` or
            distributes its training (`strategy`, `cpu_devices`, a TF_CONFIG of several
            workers); a customized `search` or `model="auto"` also asks for a search.
        search: how to search (`SearchSettings`).
        max_regression: the promotion gate: percentage points of test accuracy a new version
            may lose against the published baseline; it is held back when shown to lose more.
        gate_confidence: the promotion gate: percent; the confidence at which McNemar's exact
            test must show the loss (tfpipeline/export/gate.py).
        force_publish: publish even when the gate would hold the new version back.
        image_size, channels: the model's input (height, width) and channels; None: the
            dataset's own (a folder: `folders.default_size`, `folders.default_channels`).
        cache_budget: bytes of decoded examples kept in memory; a larger dataset is cached on
            disk under `work_dir`, or not at all. None: a quarter of the RAM.
        histogram_freq, image_freq, profile_batches: TensorBoard extras
            (tfpipeline/report/tensorboard.py).
        strategy, cpu_devices, lr_scaling: distribution (tfpipeline/distribute/).
        clipnorm, clipvalue, weight_decay: optimizer options (tfpipeline/training/); None is
            off (weight decay 0: Adam; above 0: AdamW).
        export_tflite, max_quantization_drop: also publish the int8 model_int8.tflite, checked by
            LiteRT, unless it loses more than that many points of test accuracy (tfpipeline/export/tflite.py).
        ensemble: models trained (seeds seed, seed+1, ...) and exported as one that averages their
            probabilities (tfpipeline/training/ensemble.py). 1: one model, which serves at one
            model's cost (the default, tuned or not).
    """

    dataset: str = "mnist"
    kind: str = "image"
    text: TextOptions = dataclasses.field(default_factory=TextOptions)
    table: TableOptions = dataclasses.field(default_factory=TableOptions)
    model: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 42
    deterministic: bool = False
    validation_fraction: float = 0.1
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
    histogram_freq: int = 1
    image_freq: int = 0
    profile_batches: tuple[int, int] | None = None
    strategy: str = "auto"
    cpu_devices: int | None = None
    lr_scaling: str = "linear"
    tune: bool | None = None
    search: SearchSettings = dataclasses.field(default_factory=SearchSettings)
    max_regression: float = DEFAULT_MAX_REGRESSION
    gate_confidence: float = DEFAULT_GATE_CONFIDENCE
    force_publish: bool = False
    clipnorm: float | None = None
    clipvalue: float | None = None
    weight_decay: float | None = None
    export_tflite: bool = False
    max_quantization_drop: float = 0.5
    ensemble: int = 1

    def __post_init__(self):
        if self.model is None:  # each kind's default lives in DEFAULT_MODELS, not here
            self.model = DEFAULT_MODELS.get(self.kind, DEFAULT_MODELS["image"])

    @property
    def dataset_name(self) -> str:
        """What exports, logs and checkpoints are filed under: a folder's base name or the TFDS name."""
        if self.kind != "image":  # always a path: a folder's name, a file's without its suffix
            path = Path(self.dataset).expanduser().resolve()
            return path.stem if path.is_file() or path.suffix.lower() in (".csv", ".tsv") else path.name
        from tfpipeline import data  # TFDS and TensorFlow: only when asked

        return data.dataset_name(self.dataset)

    def input_identity(self) -> dict[str, Any]:
        """--image-size and --channels for a resume key, when given (older runs keep their keys);
        the kind and its options for text and tables."""
        if self.kind != "image":
            return {"kind": self.kind, "options": dataclasses.asdict(self.options())}
        return {key: getattr(self, key) for key in ("image_size", "channels") if getattr(self, key) is not None}

    def options(self) -> TextOptions | TableOptions | None:
        """The options of this run's kind (None for images)."""
        return {"text": self.text, "table": self.table}.get(self.kind)

    def _validate_kind(self) -> None:
        """The kind is known, and only its own options are given."""
        _check("kind", self.kind, _one_of(*KINDS))
        if self.kind == "table":
            self.table.validate()
        foreign = [*([] if self.kind == "text" else self.text.given()),
                   *([] if self.kind == "table" else self.table.given()),
                   *(["--image-size"] if self.kind != "image" and self.image_size else []),
                   *(["--channels"] if self.kind != "image" and self.channels else [])]
        if foreign:
            commands = {"image": "pipelines.images", "text": "pipelines.text", "table": "pipelines.table"}
            raise UserError(f"{', '.join(foreign)} do{'es' if len(foreign) == 1 else ''} not apply to {self.kind} "
                            f"data (python -m {commands[self.kind]}); drop {'it' if len(foreign) == 1 else 'them'}.")

    def check_values(self) -> None:
        """The checks that need no TensorFlow: the kind and its options, and each value's own
        rule (`_RULES`). The CLI makes them before TensorFlow starts, so a mistyped value is
        answered at once; `validate` makes them too.

        Raises:
            UserError: naming the flag, the value and the fix.
        """
        self._validate_kind()
        for name, rule in _RULES.items():
            _check(name, getattr(self, name), rule)

    def validate(self) -> None:
        """Check every value and combination; raises `UserError` naming the flag, the value and the fix."""
        from tfpipeline import distribute, models, training
        from tfpipeline.export import tflite

        self.check_values()
        _check("strategy", self.strategy, _one_of(*distribute.STRATEGIES))
        _check("lr_scaling", self.lr_scaling, _one_of(*distribute.LR_SCALING))
        multi_worker = self.strategy == "multi_worker" or (self.strategy == "auto" and self._tf_config_workers() > 1)
        if self.ensemble > 1 and multi_worker:
            raise UserError(f"--ensemble {self.ensemble} trains several models one after another, which the "
                            "multi-worker loop (TF_CONFIG, --strategy multi_worker) does not do yet. Train one "
                            "model on the workers (drop --ensemble), or train the ensemble on one machine.")
        if self.model != "auto":
            # an unknown family, one the kind does not take, --hparam names → UserError
            models.hyperparams(self.model, self.pinned(), kind=self.kind)
        training.check_optimizer_options(self.clipnorm, self.clipvalue, self.weight_decay)
        # Before any training time is spent; text and tables are refused with their spec's
        # sentence once the data is read (`tflite.check_supported`), still before training.
        if self.export_tflite and self.kind == "image":
            tflite.check_available()
        self.search.validate(self.kind)

    def search_plan(self) -> SearchSettings | None:
        """The search this run does, or None to train the family's defaults (printing why,
        when the default was to search). Refuses combinations that cannot both hold."""
        self.search.validate(self.kind)
        given = self.search.customized() + (["--model auto"] if self.model == "auto" else [])
        if self.tune is False:
            if given:
                raise UserError(f"{', '.join(given)} configure{'s' if len(given) == 1 else ''} the hyperparameter "
                                "search, which --no-tune turns off: drop one or the other.")
            return None
        distributed = self._distributed()
        if self.tune is None and not given:
            reason = "--quick" if self.quick else (distributed[0] if distributed else None)
            if reason:
                print(f"No hyperparameter search ({reason}): training the family's defaults. "
                      "Add --tune to search first.", flush=True)
                return None
        if distributed:
            raise UserError(f"{distributed[0]} distributes a single training; the search runs each trial on one "
                            "device. Add --no-tune to train the family's defaults with it, or scale the search out "
                            "with distributed tuning (KERASTUNER_TUNER_ID, see docs/tuning.md).")
        if self.search.families and self.model != "auto":
            raise UserError(f"--families chooses among families for --model auto; with --model {self.model} "
                            "drop it (or use --model auto).")
        if self.model == "auto" and (self.hparams or self.learning_rate is not None):
            raise UserError("--hparam and --learning-rate pin one family's hyperparameters; with --model auto "
                            "every family is searched. Choose a --model to pin them.")
        return self.search

    @staticmethod
    def _tf_config_workers() -> int:
        from tfpipeline import distribute

        cluster = distribute.parse_tf_config(os.environ.get(distribute.ENV_TF_CONFIG))
        return cluster.workers if cluster is not None else 1

    def _distributed(self) -> list[str]:
        """What makes this run distribute its training, as the user would name it."""
        workers = self._tf_config_workers() if self.strategy == "auto" else 1
        return [what for what, on in (("--strategy", self.strategy not in ("auto", "default")),
                                      ("--cpu-devices", self.cpu_devices is not None),
                                      (f"TF_CONFIG with {workers} workers", workers > 1)) if on]

    def pinned(self) -> dict[str, Any]:
        """Hyperparameters the user fixed (--hparam, --batch-size, --learning-rate); a search
        does not vary them. --epochs is not among them: a search finds the epochs."""
        fixed = dict(self.hparams)
        for key in ("batch_size", "learning_rate"):
            if getattr(self, key) is not None:
                fixed[key] = getattr(self, key)
        return fixed


# The range of each checked field: a predicate and what it says when the value is outside.
# Flags are parsed by type only (tfpipeline/cli.py); these rules are the one place ranges live.
def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _non_negative_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _non_negative(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def _one_of(*allowed):
    rule = lambda value: value in allowed
    return rule, f"must be one of {', '.join(map(str, allowed))}"


_RULES = {
    "epochs": (_positive_int, "must be a positive whole number"),
    "batch_size": (_positive_int, "must be a positive whole number"),
    "cpu_devices": (_positive_int, "must be a positive whole number"),
    "ensemble": (_positive_int, "must be a positive whole number"),
    "learning_rate": (_positive, "must be a positive finite number"),
    "clipnorm": (_positive, "must be a positive finite number"),
    "clipvalue": (_positive, "must be a positive finite number"),
    "weight_decay": (_non_negative, "must be 0 or a positive finite number"),
    "validation_fraction": (lambda v: isinstance(v, (int, float)) and 0 < v < 1,
                            "must be between 0 and 1 (exclusive)"),
    "channels": _one_of(1, 3),
    "cache_budget": (_non_negative_int, "must be 0 or a number of bytes"),
    "histogram_freq": (_non_negative_int, "must be 0 or a positive whole number"),
    "image_freq": (_non_negative_int, "must be 0 or a positive whole number"),
    "profile_batches": (lambda v: len(v) == 2 and all(_positive_int(b) for b in v) and v[0] <= v[1],
                        "needs 1 <= START <= END (batches count from 1)"),
    "max_regression": (_non_negative, "must be 0 or a positive number of points"),
    "gate_confidence": (lambda v: isinstance(v, (int, float)) and 50 <= v < 100,
                        "must be a percentage from 50 up to (not including) 100, such as 95 or 99"),
    "max_quantization_drop": (_non_negative, "must be 0 or a positive number of points"),
}


def _check(name: str, value, rule) -> None:
    """Raise `UserError` naming the flag when `value` (None: not set) breaks `rule`."""
    ok, says = rule
    if value is not None and not ok(value):
        raise UserError(f"--{name.replace('_', '-')} {says}, got {value}.")


def _check_positive_int(name: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise UserError(f"--{name.replace('_', '-')} must be a positive whole number, got {value}.")
