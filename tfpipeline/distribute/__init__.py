"""Distribution: tf.distribute strategies, the multi-worker loop and per-worker input.
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
