"""Arithmetic: what the machine's cores can multiply-add, and what a training step asks of them.

    python -m bench.flops            # both figures for the default CNN, and their ratio

`matmul_flops_per_second` times a large fp32 `tf.matmul` (2·n³ FLOPs each), the practical
ceiling of these cores for dense arithmetic. `train_step_flops` counts the floating-point
operations of one training step (forward, loss and gradients) from the step's own TensorFlow
graph, pruned to the ops its gradients depend on (as TensorFlow prunes it when it runs), with
TensorFlow's profiler (`tf.compat.v1.profiler`, the ops' registered FLOP statistics:
convolutions, their backprop kernels, matmuls and the elementwise ops that register one). The
optimizer's update and the weight average are not in it; they are a few elementwise ops per
weight, small next to the convolutions.
"""

from __future__ import annotations

import argparse
import json
import time

from tfpipeline import start_tensorflow_quietly

start_tensorflow_quietly()  # TensorFlow loads here, without its C++ start-up noise

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


def matmul_flops_per_second(n: int = 2048, calls: int = 10, repeats: int = 5) -> float:
    """Best of `repeats` timings of `calls` chained n×n fp32 matmuls, in FLOP/s."""
    a = tf.random.stateless_normal((n, n), seed=(1, 2))
    b = tf.random.stateless_normal((n, n), seed=(3, 4))

    @tf.function
    def chain(x):
        for _ in range(calls):
            x = tf.matmul(x, b) * (1.0 / n)  # scaled so the values stay finite
        return x

    chain(a).numpy()  # trace and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        chain(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * calls / best


def train_step_flops(model: keras.Model, batch_size: int) -> int:
    """FLOPs of one training step of `model` on a batch, counted from its graph."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        return tape.gradient(loss, model.trainable_variables)

    spec = tf.TensorSpec((batch_size, *model.input_shape[1:]), model.inputs[0].dtype)
    graph = step.get_concrete_function(spec, tf.TensorSpec((batch_size,), tf.int32)).graph
    # Only the ops the gradients need: a conv's gradient function adds both backprop kernels,
    # and the one whose result nothing uses (the input gradient of a first conv, or of any
    # conv below frozen layers) is pruned when the function runs, so it must not count.
    needed = tf.compat.v1.graph_util.extract_sub_graph(graph.as_graph_def(add_shapes=True),
                                                       [tensor.op.name for tensor in graph.outputs])
    pruned = tf.Graph()
    with pruned.as_default():
        tf.graph_util.import_graph_def(needed, name="")
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(tf.compat.v1.profiler.profile(pruned, options=options).total_float_ops)


def main(argv=None) -> int:
    from tfpipeline import models

    parser = argparse.ArgumentParser(prog="python -m bench.flops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="cnn", help="model family (default: cnn)")
    args = parser.parse_args(argv)
    hp = models.hyperparams(args.family)
    model = models.build(args.family, (28, 28, 1), 10, hp)
    result = {"family": args.family, "batch_size": hp.batch_size,
              "train_step_flops": train_step_flops(model, hp.batch_size),
              "matmul_flops_per_second": round(matmul_flops_per_second())}
    result["train_flops_per_image"] = round(result["train_step_flops"] / hp.batch_size)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
