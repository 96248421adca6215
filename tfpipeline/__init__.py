"""tfpipeline: tf.data input pipelines, Keras 3 model families, KerasTuner search,
tf.distribute training and a verified SavedModel export that serves in TF Serving.

Where things live (one stage per subpackage; each package's docstring says what it owns and
what it may import):

    cli, pipelines/*      the training command: flags → `config.PipelineConfig` → `pipeline.run`
    config                what a run is asked to do: defaults, ranges and combinations
    pipeline              the one pipeline: data → [search] → train → evaluate → gate → export → report
    errors                how a command ends: outcome exceptions, exit codes, the one error path
    runstate              run ids, resume keys, state files written atomically
    signatures            names shared by export, server and clients (signature keys, tensors)
    argtypes              flag parsers shared by the commands
    serve, predict        the serving and prediction commands

    inputs/               the input spec: what every later stage asks about the model's input
    data/                 TFDS and the user's files → cached, shuffled, batched tf.data splits
    models/               the four families and their search spaces
    training/             settings, schedules, callbacks, the fit loop, optimizers, ensembles
    tuning/               the KerasTuner search: hypermodel, oracles and tuners, trial records
    distribute/           strategies, the multi-worker loop, each worker's share of the input
    export/               verified SavedModel, promotion gate, TFLite, TF Serving's warm-up file
    report/               evaluation, TensorBoard summaries, explanations
    serving/              the TF Serving-compatible server and the prediction clients

Lower layers never import higher ones: data, models and inputs import nothing from training,
tuning, export, report or serving (tests/test_layout.py checks it).
"""

__version__ = "0.1.0"


def lazy_exports(package: str, names: dict[str, str]):
    """A package's module-level `__getattr__` that imports each of `names` (attribute → module
    path) on first use and keeps it: the packages whose modules import TensorFlow re-export
    their names this way, so a command's `--help` and flag checks never start TensorFlow."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import importlib
        import sys

        value = getattr(importlib.import_module(names[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


# TensorFlow's C++ start-up lines that say nothing a user can act on: they are written to the
# process's stderr before TF_CPP_MIN_LOG_LEVEL takes effect (the GPU build's CUDA stub looking
# for drivers on a machine without a GPU, the CPU-instructions notice).
_START_UP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions",
)


def start_tensorflow_quietly() -> None:
    """Import TensorFlow and find its devices with the known start-up noise held back.

    `TF_CPP_MIN_LOG_LEVEL` (2 unless the user set it) silences TensorFlow's logging, except the
    lines its C++ libraries print while loading, before their logging is configured. Those go
    to file descriptor 2 directly, so they are caught there for the length of the import and
    the device search, and every line that is not known noise (`_START_UP_NOISE`) is written
    back to stderr: a real warning or an import error still shows. `TF_CPP_MIN_LOG_LEVEL=0`
    keeps everything, as TensorFlow prints it.
    """
    import os
    import sys
    import tempfile

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the GPU platform's own start-up lines come here
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors="replace").splitlines()
                    if line.strip() and not any(noise in line for noise in _START_UP_NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
