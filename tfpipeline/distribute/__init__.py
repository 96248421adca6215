"""Distribution: tf.distribute strategies, the multi-worker loop and per-worker input.

Owns: choosing and setting up a strategy from flags and TF_CONFIG (`strategies`: the
`Distribution` a run asks for global batch, learning-rate scaling and where a worker may
write), the training loop for MultiWorkerMirrored (`multiworker`), and each worker's share of
a folder's files (`sharding`).

May import: errors, data and training. It imports nothing from tuning, export, report or
serving.
"""

from tfpipeline.distribute.strategies import (  # noqa: F401
    ENV_CPU_BFC,
    ENV_TF_CONFIG,
    LR_SCALING,
    STRATEGIES,
    TF_CONFIG_EXAMPLE,
    ClusterInfo,
    Distribution,
    local_copy,
    parse_tf_config,
    resolve,
    scale_learning_rate,
    setup,
    split_cpu,
    use_bfc_cpu_allocator,
    weights_digest,
)
