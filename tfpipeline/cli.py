"""Command line for the pipelines: `python -m pipelines.<dataset> [flags]`.

A thin layer: parse flags into a `PipelineConfig`, call `pipeline.run`, print a summary.
User mistakes end with one clear paragraph and a non-zero exit status, not a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap

from tfpipeline import argtypes, config, start_tensorflow_quietly
from tfpipeline.data import paths
from tfpipeline.errors import (
    EXIT_DIVERGED,
    EXIT_EXPORT_FAILED,
    EXIT_HELD_BACK,
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    exit_on_error,
)

_DEFAULTS = {field.name: field.default for field in dataclasses.fields(config.PipelineConfig)}
_TEXT_DEFAULTS = config.TextOptions()
_TABLE_DEFAULTS = config.TableOptions()
EXIT_STATUS = (f"exit status: 0 published, {EXIT_USER_ERROR} a usage or input mistake, {EXIT_DIVERGED} training "
               f"diverged,\n{EXIT_EXPORT_FAILED} export verification failed, {EXIT_HELD_BACK} held back by the "
               f"promotion gate, {EXIT_INTERRUPTED} interrupted.\n")


def families(text: str) -> tuple[str, ...]:
    """`A,B`: model families for --model auto."""
    from tfpipeline.models import FAMILY_NAMES as FAMILIES

    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown model famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(map(repr, unknown)) or repr(text)}; "
            f"use a comma-separated list of {', '.join(FAMILIES)}")
    return names


def build_parser(dataset: str | None = "mnist", kind: str = "image") -> argparse.ArgumentParser:
    """The flags; `dataset` None (`python -m pipelines.images`, `.text`, `.table`): --dataset is
    required. `kind` "text" or "table": that command's flags (no image flags, its own group)."""
    from tfpipeline.data import ENV_MANUAL_DIR

    if kind != "image":
        return _kind_parser(kind)
    if dataset is None:
        return _images_parser()
    parser = argparse.ArgumentParser(
        prog=f"python -m pipelines.{dataset}",
        description=textwrap.dedent(
            f"""\
            Search, train, evaluate, gate and export an image classifier on the TFDS dataset
            {dataset!r}: TFDS → tf.data → [KerasTuner search] → Keras model → test evaluation →
            promotion gate → verified SavedModel in <export-dir>/<dataset>/<version>/, ready for
            TF Serving or `python -m tfpipeline.serve`."""
        ),
        epilog=textwrap.dedent(
            f"""\
            examples:
              python -m pipelines.{dataset}                      # search the CNN's hyperparameters, train the best
              python -m pipelines.{dataset} --no-tune            # train the CNN's defaults (a few minutes)
              python -m pipelines.{dataset} --model transformer --no-tune --epochs 5
              python -m pipelines.{dataset} --quick              # smoke test: small subset, 1 epoch, no search
              python -m pipelines.{dataset} --no-tune --hparam filters=[32,64] --hparam dropout=0.4

            offline: put the dataset's published files in a folder and pass --manual-dir DIR
            (or set {ENV_MANUAL_DIR}); TFDS checks their checksums and prepares them once.
            Re-running a command that was interrupted resumes it (search and training).
            """
        ) + EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for add in (_what, _how, _distribution, _search, _gate, _where, _tensorboard):
        add(parser, dataset)
    return parser


def _images_parser() -> argparse.ArgumentParser:
    """`python -m pipelines.images`: the same flags, --dataset a folder (or a TFDS name) and required."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.images",
        description=textwrap.dedent(
            """\
            Search, train, evaluate, gate and export an image classifier on a folder of your own
            images, DIR/<class>/* or DIR/train/<class>/* (see docs/images.md), or on a TFDS dataset:
            files → tf.data (decode, resize) → [KerasTuner search] → Keras model → test evaluation →
            promotion gate → verified SavedModel in <export-dir>/<folder name>/<version>/ whose
            serving_bytes signature takes JPEG/PNG files."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              python -m pipelines.images --dataset photos/                       # search, train the best
              python -m pipelines.images --dataset photos/ --no-tune --image-size 64x64
              python -m pipelines.images --dataset photos/ --quick               # smoke test
              python -m tfpipeline.predict cat.jpg --model-dir exported/photos   # classify a file
            """
        ) + EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for add in (_what, _how, _distribution, _search, _gate, _where, _tensorboard):
        add(parser, None)
    return parser


_KIND_HELP = {
    "text": dict(
        description="""\
            Search, train, evaluate, gate and export a text classifier: labelled documents →
            TextVectorization inside the model (vocabulary and sequence length chosen from the
            training split) → [KerasTuner search] → Keras model → test evaluation → promotion gate →
            verified SavedModel in <export-dir>/<dataset name>/<version>/ whose serving_default
            takes raw strings (`text`, DT_STRING). See docs/text.md.""",
        dataset="a folder of class folders of .txt files (DIR/<class>/*.txt, or DIR/train/<class>/*.txt with "
                "optional validation/ and test/), a CSV/TSV file, or a folder of train.csv [validation.csv] "
                "test.csv",
        examples="""\
            examples:
              python -m pipelines.text --dataset reviews/                        # search, train the best
              python -m pipelines.text --dataset tweets.tsv --label-column author --no-tune
              python -m pipelines.text --dataset reviews/ --model auto           # search all four families
              python -m tfpipeline.predict --model-dir exported/reviews --text "a wonderful film"
            """),
    "table": dict(
        description="""\
            Search, train, evaluate, gate and export a classifier on a table: a CSV/TSV file → column
            types inferred from the training split → preprocessing inside the model → [KerasTuner
            search] → Keras model → test evaluation, beside a gradient-boosted tree baseline →
            promotion gate → verified SavedModel in <export-dir>/<dataset name>/<version>/ that takes
            one raw value per feature column (serving_default) or tf.Examples (classify). See
            docs/tables.md.""",
        dataset="a CSV/TSV file (validation and test carved, seeded and stratified), or a folder of train.csv "
                "[validation.csv] test.csv",
        examples="""\
            examples:
              python -m pipelines.table --dataset penguins.csv --label-column species
              python -m pipelines.table --dataset penguins.csv --label-column species --no-tune --class-weight balanced
              python -m pipelines.table --dataset data/ --label-column y --categorical zip --ignore id
              python -m tfpipeline.predict rows.csv --model-dir exported/penguins
            """),
}


def _kind_parser(kind: str) -> argparse.ArgumentParser:
    """`python -m pipelines.text` and `python -m pipelines.table`: the image commands' flags
    without the image ones, --dataset required, and the kind's own group."""
    texts = _KIND_HELP[kind]
    parser = argparse.ArgumentParser(
        prog=f"python -m pipelines.{kind}",
        description=textwrap.dedent(texts["description"]),
        epilog=textwrap.dedent(texts["examples"]) + EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _what_kind(parser, kind, texts["dataset"])
    (_text if kind == "text" else _table)(parser)
    for add in (_how, _distribution, _search, _gate):
        add(parser, None)
    _where(parser, None, tfds=False)
    _tensorboard(parser, None)
    return parser


def _what_kind(parser: argparse.ArgumentParser, kind: str, dataset_help: str) -> None:
    from tfpipeline.models import FAMILY_NAMES as FAMILIES

    default = config.DEFAULT_MODELS[kind]
    what = parser.add_argument_group("what to train")
    what.add_argument("--dataset", required=True, help=dataset_help)
    # Every family's name: one a kind does not take is refused with the reason (config.validate).
    what.add_argument("--model", default=default, choices=[*FAMILIES, "auto"],
                      help=f"model family, or auto: the search chooses the family too (default: {default})"
                           + ("; cnn and rnn do not take tables" if kind == "table" else ""))
    what.add_argument("--hparam", type=argtypes.key_value, action="append", default=[], metavar="KEY=VALUE",
                      help="set one of the family's hyperparameters (repeatable; pinned during a search); "
                           f"see tfpipeline/models/{kind}/")


def _text(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("text tables (a CSV/TSV file or a folder of them; not for folders of files)")
    group.add_argument("--text-column", default=_TEXT_DEFAULTS.text_column, metavar="COL",
                       help="the column holding the documents (default: detected, e.g. a column named text)")
    group.add_argument("--label-column", default=_TEXT_DEFAULTS.label_column, metavar="COL",
                       help="the column holding the classes (default: detected, e.g. a column named label)")


def _table(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("table columns and metrics")
    group.add_argument("--label-column", required=True, metavar="COL", help="the column to predict (required)")
    for flag, what in (("numeric", "numbers"), ("categorical", "categories"), ("ignore", "not features")):
        group.add_argument(f"--{flag}", type=argtypes.names, default=getattr(_TABLE_DEFAULTS, flag),
                           metavar="COL[,COL...]", help=f"treat these columns as {what}, whatever their values "
                                                        "look like (default: inferred from the training split)")
    group.add_argument("--class-weight", choices=config.CLASS_WEIGHTS, default=_TABLE_DEFAULTS.class_weight,
                       help="balanced: weigh each class by the inverse of its training frequency "
                            f"(default: {_TABLE_DEFAULTS.class_weight})")
    group.add_argument("--no-baseline", dest="baseline", action="store_false", default=_TABLE_DEFAULTS.baseline,
                       help="skip the gradient-boosted tree baseline (default: trained and reported beside the "
                            "network's accuracy)")


def _what(parser: argparse.ArgumentParser, dataset: str) -> None:
    from tfpipeline.models import FAMILY_NAMES as FAMILIES

    what = parser.add_argument_group("what to train")
    what.add_argument("--dataset", default=dataset, required=dataset is None,
                      help="TFDS dataset name, or a folder of images: DIR/<class>/* or DIR/train/<class>/* "
                           f"(docs/images.md){f'; default: {dataset}' if dataset else ''}")
    what.add_argument("--image-size", type=argtypes.image_size, metavar="HxW",
                      help="the model's input size; images are resized to it (default: the dataset's own; a "
                           "folder: the median size, longer side at most 64, sides multiples of 4)")
    what.add_argument("--channels", type=int,
                      help="1 (grayscale) or 3 (RGB) input channels (default: the dataset's own; a folder: 3 "
                           "if any training image has a pixel that is not gray)")
    default = config.DEFAULT_MODELS["image"]
    what.add_argument("--model", default=default, choices=[*FAMILIES, "auto"],
                      help=f"model family, or auto: the search chooses the family too (default: {default})")
    what.add_argument("--hparam", type=argtypes.key_value, action="append", default=[], metavar="KEY=VALUE",
                      help="set one of the family's hyperparameters (repeatable; pinned during a search); "
                           "see tfpipeline/models/")


def _how(parser: argparse.ArgumentParser, dataset: str) -> None:
    how = parser.add_argument_group("how to train (default: the family's own settings, or the search's best)")
    how.add_argument("--epochs", type=int, help="number of epochs")
    how.add_argument("--batch-size", type=int,
                     help="batch size per replica; each step trains on this x replicas (the global batch)")
    how.add_argument("--learning-rate", type=float,
                     help="peak learning rate (warmup, then cosine decay), for one replica: see --lr-scaling")
    how.add_argument("--clipnorm", type=float, metavar="N",
                     help="clip each weight's gradient to this L2 norm (Keras optimizer clipnorm); default: off")
    how.add_argument("--clipvalue", type=float, metavar="V",
                     help="clip every gradient value to [-V, V] (Keras optimizer clipvalue); default: off")
    how.add_argument("--weight-decay", type=float, metavar="W",
                     help="decoupled weight decay: trains with AdamW instead of Adam (default: 0, Adam)")
    how.add_argument("--seed", type=int, default=_DEFAULTS["seed"],
                     help=f"seed for weights and data order (default: {_DEFAULTS['seed']})")
    how.add_argument("--deterministic", action="store_true", help="also make TF ops deterministic (slower)")
    how.add_argument("--validation-fraction", type=float, default=_DEFAULTS["validation_fraction"], metavar="F",
                     help="share of the training data held out for validation (a folder without test/ also "
                          f"holds out as much for test; default: {_DEFAULTS['validation_fraction']})")
    how.add_argument("--cache-budget", type=argtypes.byte_size, metavar="SIZE",
                     help="decoded examples up to SIZE (e.g. 2G) are cached in memory; a larger dataset is "
                          "cached on disk under --work-dir, or not at all (default: a quarter of the RAM)")
    how.add_argument("--ensemble", type=int, metavar="N", default=_DEFAULTS["ensemble"],
                     help="train N models (seeds --seed, --seed+1, ...) and export one that averages their "
                          "probabilities: more accurate, for N times the training (fewer --epochs each keep it "
                          "lower) and a slower served model (default: 1)")
    how.add_argument("--quick", action="store_true",
                     help="small subset and one epoch (unless --epochs), no search (unless --tune): a smoke test")


def _distribution(parser: argparse.ArgumentParser, dataset: str) -> None:
    dist = parser.add_argument_group(
        "distribution (tf.distribute)",
        "Several machines: start the same command on each, with TF_CONFIG naming them all\n"
        "(Kubeflow TFJob and Vertex AI set it); see docs/distributed.md.",
    )
    from tfpipeline.distribute import LR_SCALING, STRATEGIES

    dist.add_argument("--strategy", default=_DEFAULTS["strategy"], choices=STRATEGIES,
                      help="auto (default): multi_worker when TF_CONFIG names several workers, else mirrored "
                           "when several GPUs (or --cpu-devices N > 1) are there, else default (one device)")
    dist.add_argument("--cpu-devices", type=int, metavar="N",
                      help="split the CPU into N logical devices, so mirrored trains N replicas without GPUs")
    dist.add_argument("--lr-scaling", default=_DEFAULTS["lr_scaling"], choices=LR_SCALING,
                      help="peak learning rate x replicas (linear, default), x sqrt(replicas), or unchanged")


def _search(parser: argparse.ArgumentParser, dataset: str) -> None:
    group = parser.add_argument_group(
        "hyperparameter search (KerasTuner)",
        textwrap.fill(  # the parser keeps descriptions as written (RawDescriptionHelpFormatter)
            "By default a run searches the family's hyperparameters first, then trains the best on "
            "train+validation for the epochs it needed, and exports that. --quick, --strategy, "
            "--cpu-devices and a TF_CONFIG naming several workers train the family's defaults instead "
            "unless --tune or a search flag is given. An interrupted search resumes when the same command "
            "runs again. Distributed search: run the same command as chief and workers with "
            "KERASTUNER_TUNER_ID=chief|tuner0|tuner1..., KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT "
            "(see docs/tuning.md).", width=100),
    )
    group.add_argument("--tune", action=argparse.BooleanOptionalAction, default=None,
                       help="search first (the default for a full run), or --no-tune: train the family's defaults")
    group.add_argument("--tuner", choices=config.TUNERS, help="search algorithm (default: hyperband)")
    group.add_argument("--max-trials", type=int, metavar="N",
                       help=f"number of trials (random, bayesian; default {config.DEFAULT_TRIALS}) or a cap on "
                            f"Hyperband's (for images with its default --max-epochs and --factor: "
                            f"{config.DEFAULT_HYPERBAND_TRIALS['image']}, its first round and the best trial "
                            "continued; else none)")
    group.add_argument("--max-epochs", type=int, metavar="N",
                       help=f"epochs of the longest trial (default {config.DEFAULT_MAX_EPOCHS}; --quick: "
                            f"{config.QUICK_MAX_EPOCHS})")
    group.add_argument("--factor", type=int,
                       metavar="N", help="Hyperband: keep 1/N of the trials per round, each N times longer "
                                         f"(default {config.DEFAULT_FACTOR})")
    group.add_argument("--search-fraction", type=float, metavar="F",
                       help=f"share of the training split the trials train on (default {config.DEFAULT_FRACTION}, "
                            f"but at least {config.MIN_SEARCH_EXAMPLES:,} examples; --quick: {config.QUICK_FRACTION}); "
                            "the final training uses all of it")
    group.add_argument("--families", type=families, metavar="A,B",
                       help="with --model auto: the families to choose from (default: all)")
    group.add_argument("--overwrite", action="store_true",
                       help="drop an unfinished search of this command and start a new one")


def _gate(parser: argparse.ArgumentParser, dataset: str) -> None:
    group = parser.add_argument_group(
        "promotion gate",
        "Before publishing, the new version and the best published version of the same data are scored on\n"
        "the same test examples (none the old one trained on). It is held back (kept under\n"
        f"<base>/candidates/, exit status {EXIT_HELD_BACK}) if McNemar's exact test shows, at\n"
        "--gate-confidence, that its test accuracy is lower by more than --max-regression.",
    )
    group.add_argument("--max-regression", type=float, default=_DEFAULTS["max_regression"], metavar="POINTS",
                       help="percentage points of test accuracy a new version may lose: the gate's margin "
                            f"(default {_DEFAULTS['max_regression']})")
    group.add_argument("--gate-confidence", type=float, default=_DEFAULTS["gate_confidence"], metavar="PERCENT",
                       help="hold back a new version shown worse than the margin at this confidence "
                            f"(default {_DEFAULTS['gate_confidence']:g})")
    group.add_argument("--force-publish", action="store_true", help="publish even if the gate would hold it back")


def _where(parser: argparse.ArgumentParser, dataset: str, tfds: bool = True) -> None:
    """Where data, exports, logs and checkpoints go; `tfds` False: without TFDS's folders (text, tables)."""
    from tfpipeline.data import ENV_DATA_DIR, ENV_MANUAL_DIR

    where = parser.add_argument_group("where things go")
    if tfds:
        where.add_argument("--data-dir",
                           help=f"where TFDS keeps prepared data (default: ${ENV_DATA_DIR} or ~/tensorflow_datasets)")
        where.add_argument("--manual-dir", help="folder with the dataset's downloaded files, for offline use "
                                                f"(default: ${ENV_MANUAL_DIR})")
    where.add_argument("--export-dir", default=_DEFAULTS["export_dir"],
                       help=f"SavedModel root; versions go to <dir>/<dataset>/<N> (default: {_DEFAULTS['export_dir']})")
    where.add_argument("--export-tflite", action="store_true",
                       help="also write <version>/model_int8.tflite: int8 post-training quantization, checked with "
                            "the LiteRT interpreter on the test split (needs pip install 'tfpipeline[tflite]')")
    where.add_argument("--max-quantization-drop", type=float, default=_DEFAULTS["max_quantization_drop"],
                       metavar="POINTS",
                       help="with --export-tflite: fail the export if the int8 model's test accuracy is more than "
                            f"this many percentage points below the float model's "
                            f"(default: {_DEFAULTS['max_quantization_drop']})")
    where.add_argument("--logdir", default=_DEFAULTS["logdir"],
                       help=f"TensorBoard root; runs go to <dir>/<dataset>/<run-id> (default: {_DEFAULTS['logdir']})")
    where.add_argument("--work-dir", default=_DEFAULTS["work_dir"],
                       help=f"checkpoints that let an interrupted run resume (default: {_DEFAULTS['work_dir']})")
    where.add_argument("--run-name", help="run id for the logs (default: time and model family)")


def _tensorboard(parser: argparse.ArgumentParser, dataset: str) -> None:
    board = parser.add_argument_group("TensorBoard (tensorboard --logdir <logdir>)")
    board.add_argument("--histogram-freq", type=int, default=_DEFAULTS["histogram_freq"], metavar="N",
                       help="weight histograms every N epochs; 0 turns them off "
                            f"(default: {_DEFAULTS['histogram_freq']})")
    board.add_argument("--image-freq", type=int, default=_DEFAULTS["image_freq"], metavar="N",
                       help="also log validation prediction images and confusion matrix every N epochs "
                            "(default: 0, only the test ones at the end; not with a search, whose final "
                            "training has no validation split)")
    board.add_argument("--profile-batches", type=argtypes.batch_range, metavar="START,END",
                       help="profile training batches START to END (from 1) for TensorBoard's profile tab, "
                            "e.g. 2,4; the first batch includes tracing and compilation")


def kind_options(args: argparse.Namespace, kind: str) -> dict:
    """PipelineConfig's kind fields from the kind's flag group."""
    if kind == "image":
        return {"image_size": args.image_size, "channels": args.channels}
    group = config.TextOptions if kind == "text" else config.TableOptions
    return {"kind": kind, kind: group(**{f.name: getattr(args, f.name) for f in dataclasses.fields(group)})}


def config_from_args(args: argparse.Namespace, kind: str = "image"):
    from tfpipeline.config import PipelineConfig, SearchSettings

    return PipelineConfig(
        dataset=args.dataset, **kind_options(args, kind), model=args.model, epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate, hparams=dict(args.hparam), seed=args.seed,
        deterministic=args.deterministic, validation_fraction=args.validation_fraction,
        cache_budget=args.cache_budget,
        data_dir=getattr(args, "data_dir", None), manual_dir=getattr(args, "manual_dir", None),
        export_dir=args.export_dir,
        logdir=args.logdir, work_dir=args.work_dir, run_name=args.run_name, quick=args.quick,
        histogram_freq=args.histogram_freq, image_freq=args.image_freq, profile_batches=args.profile_batches,
        strategy=args.strategy, cpu_devices=args.cpu_devices, lr_scaling=args.lr_scaling,
        tune=args.tune,
        search=SearchSettings(tuner=args.tuner, max_trials=args.max_trials, max_epochs=args.max_epochs,
                              factor=args.factor, search_fraction=args.search_fraction,
                              families=args.families, overwrite=args.overwrite),
        max_regression=args.max_regression, gate_confidence=args.gate_confidence,
        force_publish=args.force_publish,
        clipnorm=args.clipnorm, clipvalue=args.clipvalue, weight_decay=args.weight_decay,
        export_tflite=args.export_tflite, max_quantization_drop=args.max_quantization_drop,
        ensemble=args.ensemble,
    )


def summary(result) -> str:
    """What a published (or held-back) run prints last: the figures, where everything went and
    where the time went (each stage's seconds and the day's train rate: report/timing.py)."""
    from tfpipeline.report import timing

    metadata = result.metadata
    test = metadata["metrics"]["test"]
    examples = metadata["dataset"]["num_examples"]["test"]
    extra = ensemble_summary(metadata) + kind_summary(metadata)
    record = metadata.get("timing")  # older metadata: the run's wall seconds only
    done = f"{record['total_s']:.0f} s from {record['since']}" if record else f"{metadata['run']['wall_seconds']:.0f} s"
    serve = (f"python -m tfpipeline.serve --model-name {metadata['dataset']['name']} "
             f"--model-base-path {result.export_path.parent}")
    return textwrap.dedent(
        f"""\

        Done in {done}.
          test accuracy   {test['accuracy']:.2%} on {examples:,} examples{extra}
          exported model  {result.export_path}  (reloaded and verified with tf.saved_model.load)
          metadata        {result.metadata_path}{tflite_summary(metadata)}
          metrics         {result.logdir / 'metrics.json'}
          inspect it      tensorboard --logdir {result.logdir.parent}
          serve it        {serve}"""
    ) + search_summary(metadata) + timing.summary(metadata.get("timing"))


def kind_summary(metadata: dict) -> str:
    """Text and tables: what the input was chosen to be, the metrics beside accuracy and the baseline."""
    record, test, source = metadata["dataset"]["input"], metadata["metrics"]["test"], metadata["dataset"]["source"]
    pad = "\n          "
    lines = []
    if record.get("kind") == "text":
        skipped = (source.get("skipped") or {}).get("by_reason") or {}
        lines.append(f"text input      vocabulary {record['vocabulary_size']:,} words, sequences of "
                     f"{record['sequence_length']} words; skipped: "
                     + (", ".join(f"{count} {reason}" for reason, count in skipped.items()) or "nothing"))
    if record.get("kind") == "table":
        roles = {}
        for column in record["columns"]:
            roles.setdefault(column["role"], []).append(f"{column['name']} ({column['detected']})")
        lines += [f"{role:<16}{', '.join(names)}" for role, names in roles.items()]
    if "macro_f1" in test:
        recall = ", ".join(f"{k} {v:.2%}" for k, v in test["per_class_recall"].items())
        auc = f", ROC AUC {test['roc_auc']:.4f}" if "roc_auc" in test else ""
        lines.append(f"class metrics   macro F1 {test['macro_f1']:.4f}{auc}; recall per class: {recall}")
    if "baseline" in metadata:
        lines.append(f"baseline        {metadata['baseline']['accuracy']:.2%} test accuracy "
                     f"({metadata['baseline']['model']}, same splits)")
    return "".join(pad + line for line in lines)


def ensemble_summary(metadata: dict) -> str:
    """An ensemble's line: how many models it averages and what each scored alone."""
    members = metadata.get("model", {}).get("ensemble")
    if not members:
        return ""
    alone = ", ".join(f"{m['test_accuracy']:.2%}" for m in members)
    seeds = f"{members[0]['seed']}-{members[-1]['seed']}"
    return f"\n          ensemble        the average of {len(members)} models (seeds {seeds}), alone: {alone}"


def tflite_summary(metadata: dict) -> str:
    """With --export-tflite: the int8 model's line (LiteRT accuracy, drop, size)."""
    tflite = metadata.get("export", {}).get("tflite")
    if not tflite:
        return ""
    return (f"\n          int8 TFLite     {tflite['file']} beside it: {tflite['test_accuracy']:.2%} under LiteRT "
            f"({tflite['accuracy_drop_points']:+.2f} points drop), {tflite['bytes']:,} bytes "
            f"({tflite['smaller_than_variables']:g}x smaller than the SavedModel's variables)")


def search_summary(metadata: dict) -> str:
    """A tuned run's extra lines: the search and where its trials went."""
    search = metadata.get("search")
    if not search:
        return ""
    best = search["best"]
    return (f"\n  search          {search['tuner']}: {search['trials_completed']} trials completed; trained trial "
            f"{best['trial_id']} ({best['family']}, validation accuracy {best['score']:.2%}, "
            f"peaked at epoch {best['epochs']}): "
            f"{search['selection']}"
            f"\n  trials table    {search['trials_csv']}  (curves: {search['trials_logdir']})")


def worker_summary(result) -> str:
    """A multi-worker run's other workers train but leave evaluation and export to the chief
    (`pipeline.WorkerResult`)."""
    if result.searched:  # a distributed search's worker: tuning.search said which trials it ran
        return ""
    return (f"\nDone: {result.worker} of {result.workers} finished training; the chief evaluates "
            "and exports the model.")


def main(argv: list[str] | None = None, dataset: str | None = "mnist", kind: str = "image") -> int:
    from tfpipeline.report.timing import process_started

    # Called with the flags of another process (a test, a notebook): the run's own start is the start.
    started = process_started() if argv is None else None
    args = build_parser(dataset, kind).parse_args(argv)  # exits 2 with a usage message on bad flags

    def work() -> int:
        run_config = config_from_args(args, kind)
        # A value's own mistake, or a --dataset path with nothing there, is answered before
        # TensorFlow's seconds of start-up; the loaders would say the same, later.
        run_config.check_values()
        paths.check_dataset(run_config.dataset, run_config.kind)
        start_tensorflow_quietly()
        from tfpipeline.pipeline import WorkerResult, run

        result = run(run_config, started=started)
        print(worker_summary(result) if isinstance(result, WorkerResult) else summary(result))
        return 0

    return exit_on_error(work, interrupted="Interrupted. Nothing half-written was published; run the same command "
                                           "again to resume from the last finished epoch.")
