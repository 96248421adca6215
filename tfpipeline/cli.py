"""Command line for the pipelines: `python -m pipelines.<dataset> [flags]`.

A thin layer: parse flags into a `PipelineConfig`, call `pipeline.run`, print a summary.
User mistakes end with one clear paragraph and a non-zero exit status, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_EXPORT_FAILED = 4
EXIT_INTERRUPTED = 130


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive whole number, got {value}")
    return value


def batch_range(text: str) -> tuple[int, int]:
    """`START,END`: training batches to profile, counted from 1, END included."""
    from tfpipeline.tensorboard_logs import parse_batch_range

    try:
        return parse_batch_range(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def image_size(text: str) -> tuple[int, int]:
    """`HxW`: the model's input height and width."""
    from tfpipeline.folders import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def byte_size(text: str) -> int:
    """`512M`, `2G`: bytes."""
    from tfpipeline.folders import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def hparam(text: str) -> tuple[str, object]:
    """`KEY=VALUE`, VALUE read as JSON when it parses (numbers, true/false, lists), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def build_parser(dataset: str | None = "mnist") -> argparse.ArgumentParser:
    """The flags; `dataset` None (`pipelines.images`): --dataset is required."""
    from tfpipeline.data import ENV_DATA_DIR, ENV_MANUAL_DIR
    from tfpipeline.models import FAMILIES

    prog = f"python -m pipelines.{dataset or 'images'}"
    example = dataset or "photos/"
    parser = argparse.ArgumentParser(
        prog=prog,
        description=textwrap.dedent(
            f"""\
            Train, evaluate and export an image classifier on {f"the TFDS dataset {dataset!r}" if dataset else
            "a folder of images (one sub-folder per class) or a TFDS dataset"}:
            data → tf.data → Keras model → test evaluation → verified SavedModel in
            <export-dir>/<dataset>/<version>/, ready for TF Serving or `python -m tfpipeline.serve`."""
        ),
        epilog=textwrap.dedent(
            f"""\
            examples:
              {prog}{"" if dataset else " --dataset " + example}         # defaults: the CNN
              {prog} --model transformer --epochs 5{"" if dataset else " --dataset " + example}
              {prog} --quick{"" if dataset else " --dataset " + example}    # smoke test: small subset, 1 epoch
              {prog} --hparam filters=[32,64,128] --hparam dropout=0.4{"" if dataset else " --dataset " + example}

            offline: put the dataset's published files in a folder and pass --manual-dir DIR
            (or set {ENV_MANUAL_DIR}); TFDS checks their checksums and prepares them once.
            Re-running a command that was interrupted resumes from its last finished epoch."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to train")
    what.add_argument("--dataset", default=dataset, required=dataset is None,
                      help="TFDS dataset name, or a folder of images: DIR/<class>/* or DIR/train/<class>/* "
                           f"(see docs/images.md){f'; default: {dataset}' if dataset else ''}")
    what.add_argument("--image-size", type=image_size, metavar="HxW",
                      help="the model's input size; images are resized to it (default: the dataset's own; a "
                           "folder: the median size, longer side at most 64, sides multiples of 4)")
    what.add_argument("--channels", type=int, choices=[1, 3],
                      help="1 (grayscale) or 3 (RGB) input channels (default: the dataset's own; a folder: 3 "
                           "if any training image is in colour)")
    what.add_argument("--model", default="cnn", choices=[*FAMILIES, "auto"],
                      help="model family, or auto: the search chooses the family too (default: cnn)")
    what.add_argument(
        "--hparam", type=hparam, action="append", default=[], metavar="KEY=VALUE",
        help="override one of the family's hyperparameters (repeatable); see tfpipeline/models/",
    )
    how = parser.add_argument_group("how to train (default: the family's own settings)")
    how.add_argument("--epochs", type=positive_int, help="number of epochs")
    how.add_argument("--batch-size", type=positive_int,
                     help="batch size per replica; each step trains on this x replicas (the global batch)")
    how.add_argument("--learning-rate", type=positive_float, help="peak learning rate (warmup, then cosine decay), for one replica: see --lr-scaling")
    how.add_argument("--seed", type=int, default=42, help="seed for weights and data order (default: 42)")
    how.add_argument("--deterministic", action="store_true", help="also make TF ops deterministic (slower)")
    how.add_argument("--validation-fraction", type=float, default=0.1, metavar="F",
                     help="share of the training data held out for validation (a folder without test/ also holds out as much for test; default: 0.1)")
    how.add_argument("--cache-budget", type=byte_size, metavar="SIZE",
                     help="decoded examples up to SIZE (e.g. 2G) are cached in memory; a larger dataset is "
                          "cached on disk under --work-dir, or not at all (default: a quarter of the RAM)")
    how.add_argument("--quick", action="store_true", help="small subset and one epoch (unless --epochs): a smoke test in seconds")
    dist = parser.add_argument_group(
        "distribution (tf.distribute)",
        "Several machines: start the same command on each, with TF_CONFIG naming them all\n"
        "(Kubeflow TFJob and Vertex AI set it); see the README on distributed training.",
    )
    dist.add_argument("--strategy", default="auto", choices=["auto", "default", "mirrored", "multi_worker"],
                      help="auto (default): multi_worker when TF_CONFIG names several workers, else mirrored "
                           "when several GPUs (or --cpu-devices N > 1) are there, else default (one device)")
    dist.add_argument("--cpu-devices", type=positive_int, metavar="N",
                      help="split the CPU into N logical devices, so mirrored trains N replicas without GPUs")
    dist.add_argument("--lr-scaling", default="linear", choices=["linear", "sqrt", "none"],
                      help="peak learning rate x replicas (linear, default), x sqrt(replicas), or unchanged")
    from tfpipeline import tuning

    tuning.add_arguments(parser)
    where = parser.add_argument_group("where things go")
    where.add_argument("--data-dir", help=f"where TFDS keeps prepared data (default: ${ENV_DATA_DIR} or ~/tensorflow_datasets)")
    where.add_argument("--manual-dir", help=f"folder with the dataset's downloaded files, for offline use (default: ${ENV_MANUAL_DIR})")
    where.add_argument("--export-dir", default="exported", help="SavedModel root; versions go to <dir>/<dataset>/<N> (default: exported)")
    where.add_argument("--logdir", default="runs", help="TensorBoard root; runs go to <dir>/<dataset>/<run-id> (default: runs)")
    where.add_argument("--work-dir", default="work", help="checkpoints that let an interrupted run resume (default: work)")
    where.add_argument("--run-name", help="run id for the logs (default: time and model family)")
    board = parser.add_argument_group("TensorBoard (tensorboard --logdir <logdir>)")
    board.add_argument("--histogram-freq", type=non_negative_int, default=1, metavar="N",
                       help="weight histograms every N epochs; 0 turns them off (default: 1)")
    board.add_argument("--image-freq", type=non_negative_int, default=0, metavar="N",
                       help="also log validation prediction images and confusion matrix every N epochs "
                            "(default: 0, only the test ones at the end)")
    board.add_argument("--profile-batches", type=batch_range, metavar="START,END",
                       help="profile training batches START to END (from 1) for TensorBoard's profile tab, "
                            "e.g. 2,4; the first batch includes tracing and compilation")
    return parser


def config_from_args(args: argparse.Namespace):
    from tfpipeline import tuning
    from tfpipeline.pipeline import PipelineConfig

    return PipelineConfig(
        dataset=args.dataset,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        hparams=dict(args.hparam),
        seed=args.seed,
        deterministic=args.deterministic,
        validation_fraction=args.validation_fraction,
        image_size=args.image_size,
        channels=args.channels,
        cache_budget=args.cache_budget,
        data_dir=args.data_dir,
        manual_dir=args.manual_dir,
        export_dir=args.export_dir,
        logdir=args.logdir,
        work_dir=args.work_dir,
        run_name=args.run_name,
        quick=args.quick,
        histogram_freq=args.histogram_freq,
        image_freq=args.image_freq,
        profile_batches=args.profile_batches,
        strategy=args.strategy,
        cpu_devices=args.cpu_devices,
        lr_scaling=args.lr_scaling,
        search=tuning.settings_from_args(args),
    )


def summary(result) -> str:
    test = result.metadata["metrics"]["test"]
    wall = result.metadata["run"]["wall_seconds"]
    return textwrap.dedent(
        f"""\

        Done in {wall:.0f} s.
          test accuracy   {test['accuracy']:.2%} on {result.metadata['dataset']['num_examples']['test']:,} images
          exported model  {result.export_path}  (reloaded and verified with tf.saved_model.load)
          metadata        {result.metadata_path}
          metrics         {result.logdir / 'metrics.json'}
          inspect it      tensorboard --logdir {result.logdir.parent}
          serve it        python -m tfpipeline.serve --model-name {result.metadata['dataset']['name']} --model-base-path {result.export_path.parent}"""
    ) + search_summary(result.metadata)


def search_summary(metadata: dict) -> str:
    """A tuned run's extra lines: the search and where its trials went."""
    search = metadata.get("search")
    if not search:
        return ""
    best = search["best"]
    return (f"\n  search          {search['tuner']}: {search['trials_completed']} trials completed; best trial "
            f"{best['trial_id']} ({best['family']}, validation accuracy {best['score']:.2%}, {best['epochs']} epochs)"
            f"\n  trials table    {search['trials_csv']}  (curves: {search['trials_logdir']})")


def worker_summary(result) -> str:
    """A multi-worker run's other workers train but leave evaluation and export to the chief."""
    if "search" in result.metadata:  # a distributed search's worker: tuning.run said which trials it ran
        return ""
    dist = result.metadata["distribution"]
    return (f"\nDone: {dist['worker']} of {dist['workers']} finished training; the chief evaluates "
            "and exports the model.")


def fail(message: str, code: int) -> int:
    # Never break inside a word: paths (pytest-of-root, my-data/...) must stay copyable.
    print(textwrap.fill(f"error: {message}", width=100, break_on_hyphens=False, break_long_words=False),
          file=sys.stderr)
    return code


def main(argv: list[str] | None = None, dataset: str | None = "mnist") -> int:
    args = build_parser(dataset).parse_args(argv)  # exits 2 with a usage message on bad flags

    from tfpipeline.errors import UserError
    from tfpipeline.export import ExportVerificationError
    from tfpipeline.pipeline import run
    from tfpipeline.training import TrainingDiverged

    try:
        result = run(config_from_args(args))
    except UserError as exc:
        return fail(str(exc), EXIT_USER_ERROR)
    except TrainingDiverged as exc:
        return fail(
            f"Training diverged: {exc}. Nothing was exported. Try a lower --learning-rate "
            "(or a smaller --batch-size).",
            EXIT_DIVERGED,
        )
    except ExportVerificationError as exc:
        return fail(f"Export failed verification: {exc}. Nothing was published.", EXIT_EXPORT_FAILED)
    except KeyboardInterrupt:
        return fail(
            "Interrupted. Nothing half-written was published; run the same command again to "
            "resume from the last finished epoch.",
            EXIT_INTERRUPTED,
        )
    print(summary(result) if result.export_path is not None else worker_summary(result))
    return 0
