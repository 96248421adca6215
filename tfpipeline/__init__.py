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
