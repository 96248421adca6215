"""Serve exported SavedModels over TensorFlow Serving's gRPC and REST APIs.

    python -m tfpipeline.serve --port=8500 --rest_api_port=8501 \\
        --model_name=mnist --model_base_path=exported/mnist
    python -m tfpipeline.serve --model_config_file=models.config \\
        --monitoring_config_file=monitoring.config --enable_batching=true \\
        --batching_parameters_file=batching.config

Flags are TF Serving's, in either `--flag=value` or `--flag value` form; the dashed
spellings this command had before (--model-name, --rest-api-port, ...) stay as aliases.
Unlike TF Serving: the bind address defaults to 127.0.0.1 (`--host 0.0.0.0` in a container),
port 0 picks a free port instead of disabling an API, and batching is on by default. TF
Serving flags this server accepts but does not implement (`UNIMPLEMENTED_FLAGS`) are taken,
so a TF Serving command line starts unchanged, and each one given is named in a warning at
start. The server itself lives in tfpipeline.serving; this module turns the command line
into a ServerConfig and reports setup mistakes without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tfpipeline import start_tensorflow_quietly
from tfpipeline.argtypes import boolean, non_negative_float, non_negative_int, port, positive_int
from tfpipeline.errors import UserError, exit_on_error
from tfpipeline.serving.versions import discover_versions

DEFAULT_BATCH_THREADS = min(2, os.cpu_count() or 1)
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_BATCH_TIMEOUT_MICROS = 2000
DEFAULT_MAX_ENQUEUED_BATCHES = 10  # TF Serving's

# TF Serving flags accepted for compatibility with its command lines, with what happens
# instead: none of them changes what this server does.
UNIMPLEMENTED_FLAGS = {
    "num_load_threads": "versions load one model at a time per model",
    "num_unload_threads": "versions unload when their last request finishes",
    "max_num_load_retries": "a failed version is retried when its files change",
    "load_retry_interval_micros": "a failed version is retried when its files change",
    "flush_filesystem_caches": "no file system caches are kept",
    "saved_model_tags": "the MetaGraph tagged \"serve\" is loaded",
    "per_process_gpu_memory_fraction": "TensorFlow's default GPU memory use",
    "platform_config_file": "only the tensorflow platform is served",
    "allow_version_labels_for_unavailable_models": "labels must name loaded versions",
    "ssl_config_file": "gRPC is served without TLS",
    "rest_api_num_threads": "REST requests are handled on the event loop",
    "rest_api_enable_cors_support": "no CORS headers are sent",
    "enable_profiler": "no profiler service",
    "xla_cpu_compilation_enabled": "TensorFlow's default JIT settings",
    "remove_unused_fields_from_bundle_metagraph": "the whole MetaGraph is kept",
    "prefer_tflite_model": "SavedModels are served",
    "num_tflite_pools": "no TF Lite models are served",
    "num_tflite_interpreters_per_pool": "no TF Lite models are served",
    "mixed_precision": "models run in the precision they were exported in",
    "thread_pool_factory_config_file": "TensorFlow's own thread pools",
    "response_tensor_serialization_option": "see --enable_serialization_as_tensor_content",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tfpipeline.serve",
        description="Serve SavedModel base paths (<base>/<version>/) over TF Serving's gRPC "
                    "and REST APIs, with TF Serving's flags.")
    models = p.add_argument_group("models (either --model_name/--model_base_path or "
                                  "--model_config_file)")
    models.add_argument("--model_name", "--model-name",
                        help="name clients use: /v1/models/NAME, ModelSpec.name")
    models.add_argument("--model_base_path", "--model-base-path", type=Path,
                        help="directory holding integer-named version directories")
    models.add_argument("--model_config_file", "--model-config-file", type=Path,
                        help="text ModelServerConfig: several models, version policies, labels")
    models.add_argument("--model_config_file_poll_wait_seconds",
                        "--model-config-file-poll-wait-seconds", type=non_negative_float, default=0,
                        help="re-read --model_config_file this often; 0 reads it once (default)")
    models.add_argument("--file_system_poll_wait_seconds", "--file-system-poll-wait-seconds",
                        type=non_negative_float, default=2.0,
                        help="how often to look for new versions; 0 loads once at start "
                        "(default 2)")
    models.add_argument("--num-versions", "--num_versions", type=positive_int,
                        help="with --model_base_path: serve the N newest versions (default 1)")
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to bind both APIs (default 127.0.0.1: this machine only; "
                     "0.0.0.0 in a container)")
    net.add_argument("--port", type=port, default=8500,
                     help="gRPC port, as in TF Serving (default 8500); 0 picks a free one")
    net.add_argument("--rest_api_port", "--rest-api-port", type=port, default=8501,
                     help="REST port (default 8501); 0 picks a free one")
    net.add_argument("--rest_api_timeout_in_ms", "--rest-api-timeout-in-ms", type=positive_int,
                     default=30000, help="REST predict requests give up after this long "
                     "(default 30000)")
    net.add_argument("--grpc_max_threads", "--grpc-max-threads", type=positive_int,
                     help="most gRPC calls handled at once; more are refused with "
                     "RESOURCE_EXHAUSTED (default: no limit)")
    net.add_argument("--max-body-bytes", "--max_body_bytes", type=positive_int,
                     default=16 * 1024 * 1024,
                     help="larger REST bodies get 413, larger gRPC messages RESOURCE_EXHAUSTED "
                     "(default 16 MiB)")
    net.add_argument("--max-instances", "--max_instances", type=positive_int, default=1024,
                     help="most examples in one request (default 1024)")
    net.add_argument("--monitoring_config_file", "--monitoring-config-file", type=Path,
                     help="text MonitoringConfig; prometheus_config { enable: true } serves "
                     "Prometheus metrics on the REST port")
    _add_tf_serving_flags(p, net)
    batch = p.add_argument_group("batching")
    batch.add_argument("--enable_batching", "--enable-batching", type=boolean, nargs="?",
                       const=True, default=True, metavar="true|false",
                       help="merge concurrent requests into one model call (default true)")
    batch.add_argument("--no-enable-batching", "--no-batching", dest="enable_batching",
                       action="store_false", help="same as --enable_batching=false")
    batch.add_argument("--batching_parameters_file", "--batching-parameters-file", type=Path,
                       help="text BatchingParameters: max_batch_size, batch_timeout_micros, "
                       "max_enqueued_batches, num_batch_threads, allowed_batch_sizes")
    batch.add_argument("--max-batch-size", "--max_batch_size", type=positive_int,
                       help=f"most examples in one merged model call (default "
                       f"{DEFAULT_MAX_BATCH_SIZE})")
    batch.add_argument("--batch-timeout-micros", "--batch_timeout_micros", type=non_negative_float,
                       help="longest a batch waits for requests already arriving "
                       f"(default {DEFAULT_BATCH_TIMEOUT_MICROS})")
    batch.add_argument("--num-batch-threads", "--num_batch_threads", type=positive_int,
                       help=f"threads running model calls (default {DEFAULT_BATCH_THREADS})")
    batch.add_argument("--max-enqueued-batches", "--max_enqueued_batches", type=positive_int,
                       help="most batches waiting; a request that does not fit gets "
                       f"503/UNAVAILABLE (default {DEFAULT_MAX_ENQUEUED_BATCHES})")
    threads = p.add_argument_group("TensorFlow threads")
    threads.add_argument("--tensorflow_session_parallelism", "--tensorflow-session-parallelism",
                         type=non_negative_int, metavar="N",
                         help="threads for both pools below unless they are given; 0 = "
                         "TensorFlow's choice")
    threads.add_argument("--tensorflow_intra_op_parallelism", "--tensorflow-intra-op-parallelism",
                         type=non_negative_int, metavar="N",
                         help="threads one model call may use; 0 = TensorFlow's choice (all "
                         "cores), default: the cores left after the event loop's, shared "
                         "among the batch threads, at least 1")
    threads.add_argument("--tensorflow_inter_op_parallelism", "--tensorflow-inter-op-parallelism",
                         type=non_negative_int, metavar="N",
                         help="threads running independent ops; 0 = TensorFlow's choice, "
                         "default: the number of batch threads")
    args = p.parse_args(argv)
    if args.model_config_file is not None:
        if args.model_name or args.model_base_path:
            p.error("give either --model_config_file or --model_name/--model_base_path, not both")
        if args.num_versions is not None:
            p.error("--num-versions applies to --model_base_path; in a --model_config_file use "
                    "model_version_policy { latest { num_versions: N } }")
    else:
        if not args.model_base_path:
            p.error("give --model_base_path (with --model_name) or --model_config_file")
        if not args.model_name:
            p.error("--model_name is required with --model_base_path")
    if args.model_config_file_poll_wait_seconds and args.model_config_file is None:
        p.error("--model_config_file_poll_wait_seconds needs --model_config_file")
    if args.use_tflite_model:
        p.error("--use_tflite_model=true is not supported: this server serves SavedModels "
                "(export one, or serve the .tflite file with TF Serving)")
    return args


def _add_tf_serving_flags(p: argparse.ArgumentParser, group) -> None:
    """TF Serving's gRPC and API behaviour flags, and those accepted but not implemented.

    Args:
        p: the parser.
        group: the "network" argument group, for the gRPC flags.
    """
    group.add_argument("--grpc_socket_path", "--grpc-socket-path",
                       help="also serve gRPC on this Unix socket (clients dial unix:PATH)")
    group.add_argument("--grpc_channel_arguments", "--grpc-channel-arguments", default="",
                       type=channel_arguments, metavar="NAME=VALUE,...",
                       help="gRPC server arguments, e.g. grpc.max_connection_age_ms=2000")
    api = p.add_argument_group("API behaviour (TF Serving's flags)")
    api.add_argument("--enable_serialization_as_tensor_content", type=boolean, nargs="?",
                     const=True, default=False, metavar="true|false",
                     help="gRPC outputs as raw tensor_content instead of the typed *_val "
                     "fields (default false, as TF Serving)")
    api.add_argument("--enable_signature_method_name_check", type=boolean, nargs="?",
                     const=True, default=False, metavar="true|false",
                     help="Classify/Regress only on signatures of that method name "
                     "(default false, as TF Serving)")
    api.add_argument("--enable_model_warmup", type=boolean, nargs="?", const=True,
                     default=True, metavar="true|false",
                     help="replay assets.extra/tf_serving_warmup_requests before a version "
                     "serves (default true)")
    api.add_argument("--use_tflite_model", type=boolean, nargs="?", const=True, default=False,
                     metavar="true|false", help="not supported: only false is accepted")
    for name in UNIMPLEMENTED_FLAGS:
        api.add_argument(f"--{name}", dest=f"unimplemented_{name}", metavar="VALUE",
                         help=argparse.SUPPRESS)


def channel_arguments(text: str) -> tuple:
    """--grpc_channel_arguments "a=1,b=x" as (name, value) pairs; values that are whole
    numbers become ints, as TF Serving reads them."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(
                f"expected NAME=VALUE pairs separated by commas, got {item!r}")
        try:
            pairs.append((name, int(value)))
        except ValueError:
            pairs.append((name, value))
    return tuple(pairs)


def warn_unimplemented(args: argparse.Namespace) -> None:
    """Name every accepted-but-unimplemented TF Serving flag the command line gave."""
    log = logging.getLogger("tfpipeline.serving")
    for name, instead in UNIMPLEMENTED_FLAGS.items():
        value = getattr(args, f"unimplemented_{name}")
        if value is not None:
            log.warning("--%s=%s is accepted for TF Serving compatibility but not "
                        "implemented; it has no effect (%s)", name, value, instead)


def default_tf_threads(num_batch_threads: int) -> tuple[int, int]:
    """(intra-op, inter-op) threads for a server: a core for the event loop, the rest shared by
    the batch threads, and one inter-op thread per batch thread so their calls never queue."""
    cores = os.cpu_count() or 1
    return max(1, (cores - 1) // num_batch_threads), num_batch_threads


def check_base_path(base: Path, flag: str = "--model_base_path") -> None:
    """Fail early, before TensorFlow is imported, on the mistakes a user can fix."""
    if not base.exists():
        raise UserError(
            f"Model base path {base} does not exist. Point {flag} at the directory "
            "the export wrote (it holds numbered version directories, e.g. exported/mnist/1/).")
    if not base.is_dir():
        raise UserError(f"Model base path {base} is not a directory.")
    if not discover_versions(base):
        raise UserError(
            f"No model versions found under {base}: expected integer-named directories each "
            "holding a SavedModel (saved_model.pb and variables/), e.g. "
            f"{base / '1'}. Export a model first.")


def _model_specs(args) -> list:
    from tfpipeline.serving.model_config import ModelSpec, VersionPolicy, read_model_config_file

    if args.model_config_file is not None:
        specs = read_model_config_file(args.model_config_file)
        for spec in specs:
            check_base_path(spec.base_path, f"base_path of model \"{spec.name}\" in "
                            f"{args.model_config_file}")
        return specs
    check_base_path(args.model_base_path)
    policy = VersionPolicy("latest", num_versions=args.num_versions or 1)
    return [ModelSpec(args.model_name, args.model_base_path.resolve(), policy)]


def _batch_config(args):
    """Flags and --batching_parameters_file together; a value set twice is refused."""
    from tfpipeline.serving.batching import BatchConfig
    from tfpipeline.serving.model_config import BatchingFile, read_batching_parameters

    file = BatchingFile()
    if args.batching_parameters_file is not None:
        if not args.enable_batching:
            raise UserError("--batching_parameters_file is given but batching is off "
                            "(--enable_batching=false): drop one of them.")
        file = read_batching_parameters(args.batching_parameters_file)
    values = {}
    for name, flag, default in [("max_batch_size", "--max-batch-size", DEFAULT_MAX_BATCH_SIZE),
                                ("batch_timeout_micros", "--batch-timeout-micros",
                                 DEFAULT_BATCH_TIMEOUT_MICROS),
                                ("num_batch_threads", "--num-batch-threads",
                                 DEFAULT_BATCH_THREADS),
                                ("max_enqueued_batches", "--max-enqueued-batches",
                                 DEFAULT_MAX_ENQUEUED_BATCHES)]:
        from_flag, from_file = getattr(args, name), getattr(file, name)
        if from_flag is not None and from_file is not None:
            raise UserError(f"{name} is set both by {flag} and in --batching_parameters_file "
                            f"{args.batching_parameters_file}: keep one.")
        values[name] = from_file if from_file is not None else (
            from_flag if from_flag is not None else default)
    sizes = file.allowed_batch_sizes
    if sizes and sizes[-1] != values["max_batch_size"]:
        raise UserError(f"The last allowed_batch_sizes entry ({sizes[-1]}) in "
                        f"{args.batching_parameters_file} must equal max_batch_size "
                        f"({values['max_batch_size']}), as in TF Serving.")
    config = BatchConfig(enabled=args.enable_batching, max_batch_size=values["max_batch_size"],
                         timeout_seconds=values["batch_timeout_micros"] / 1e6,
                         max_enqueued_batches=values["max_enqueued_batches"],
                         allowed_batch_sizes=sizes)
    return config, values["num_batch_threads"]


def server_config(args: argparse.Namespace):
    """The `ServerConfig` the flags ask for; raises `UserError` for a setup mistake."""
    specs = _model_specs(args)
    prometheus_path = None
    if args.monitoring_config_file is not None:
        from tfpipeline.serving.model_config import read_monitoring_config

        prometheus_path = read_monitoring_config(args.monitoring_config_file)
    batching, num_batch_threads = _batch_config(args)
    intra, inter = default_tf_threads(num_batch_threads)
    if args.tensorflow_session_parallelism is not None:
        intra = inter = args.tensorflow_session_parallelism
    if args.tensorflow_intra_op_parallelism is not None:
        intra = args.tensorflow_intra_op_parallelism
    if args.tensorflow_inter_op_parallelism is not None:
        inter = args.tensorflow_inter_op_parallelism
    # The flags are checked; the serving modules import TensorFlow, so it starts here, without
    # its start-up noise in the server's log.
    start_tensorflow_quietly()
    from tfpipeline.serving.core import ServerConfig

    return ServerConfig(
        models=tuple(specs),
        model_config_file=args.model_config_file,
        model_config_poll_seconds=args.model_config_file_poll_wait_seconds,
        host=args.host,
        rest_port=args.rest_api_port,
        grpc_port=args.port,
        batching=batching,
        num_batch_threads=num_batch_threads,
        intra_op_threads=intra,
        inter_op_threads=inter,
        poll_wait_seconds=args.file_system_poll_wait_seconds,
        max_body_bytes=args.max_body_bytes,
        max_instances=args.max_instances,
        rest_timeout_seconds=args.rest_api_timeout_in_ms / 1000,
        prometheus_path=prometheus_path,
        grpc_max_concurrent_rpcs=args.grpc_max_threads,
        grpc_socket_path=args.grpc_socket_path,
        grpc_channel_arguments=args.grpc_channel_arguments,
        tensor_content=args.enable_serialization_as_tensor_content,
        method_name_check=args.enable_signature_method_name_check,
        enable_model_warmup=args.enable_model_warmup,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warn_unimplemented(args)

    def work() -> int:
        config = server_config(args)
        from tfpipeline.serving.server import run

        try:
            run(config)
        except KeyboardInterrupt:  # Ctrl-C is how a server in a terminal is stopped: not a failure
            pass
        return 0

    return exit_on_error(work)

if __name__ == "__main__":
    sys.exit(main())
