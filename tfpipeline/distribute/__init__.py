"""Distribution: tf.distribute strategies, the multi-worker loop and per-worker input.

Owns: choosing and setting up a strategy from flags and TF_CONFIG (`strategies`: the
`Distribution` a run asks for global batch, learning-rate scaling and where a worker may
write), the training loop for MultiWorkerMirrored (`multiworker`), and each worker's share of
a folder's files (`sharding`).

May import: errors, data and training. It imports nothing from tuning, export, report or
serving.
"""

from tfpipeline import lazy_exports

#: --strategy's choices and --lr-scaling's rules (`strategies.setup` and `scale_learning_rate`).
STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
LR_SCALING = ("linear", "sqrt", "none")

# The strategies import TensorFlow: they load on first use, so a command's --help stays fast.
_LAZY = {name: "tfpipeline.distribute.strategies" for name in (
    "ENV_CPU_BFC",
    "ENV_TF_CONFIG",
    "TF_CONFIG_EXAMPLE",
    "ClusterInfo",
    "Distribution",
    "free_ports",
    "local_copy",
    "local_tf_configs",
    "parse_tf_config",
    "resolve",
    "scale_learning_rate",
    "setup",
    "split_cpu",
    "use_bfc_cpu_allocator",
    "weights_digest",
)}


__getattr__ = lazy_exports(__name__, _LAZY)
