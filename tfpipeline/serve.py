"""Serve exported SavedModels over TensorFlow Serving's REST API.

    python -m tfpipeline.serve --model-name mnist --model-base-path exported/mnist

Flags follow TF Serving's names (their underscore spellings such as --rest_api_port are
accepted too). The server itself lives in tfpipeline.serving; this module only turns the
command line into a ServerConfig and reports setup mistakes without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from tfpipeline.errors import UserError
from tfpipeline.serving.versions import discover_versions


DEFAULT_BATCH_THREADS = min(2, os.cpu_count() or 1)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tfpipeline.serve",
        description="Serve a SavedModel base path (<base>/<version>/) over TF Serving's REST API.")
    p.add_argument("--model-name", "--model_name", required=True,
                   help="name in the URL: /v1/models/NAME")
    p.add_argument("--model-base-path", "--model_base_path", required=True, type=Path,
                   help="directory holding integer-named version directories")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", "--rest-api-port", "--rest_api_port", type=int, default=8501,
                   help="port to listen on; 0 picks a free one (default 8501)")
    p.add_argument("--enable-batching", "--enable_batching", action=argparse.BooleanOptionalAction,
                   default=True, help="merge concurrent requests into one model call (default on)")
    p.add_argument("--no-batching", dest="enable_batching", action="store_false",
                   help="same as --no-enable-batching")
    p.add_argument("--max-batch-size", "--max_batch_size", type=_positive, default=64,
                   help="most examples in one merged model call (default 64)")
    p.add_argument("--batch-timeout-micros", "--batch_timeout_micros", type=_non_negative,
                   default=2000, help="longest a batch waits for requests already arriving "
                   "(default 2000)")
    p.add_argument("--num-batch-threads", "--num_batch_threads", type=_positive,
                   default=DEFAULT_BATCH_THREADS, help="threads running model calls")
    p.add_argument("--tensorflow-intra-op-parallelism", "--tensorflow_intra_op_parallelism",
                   type=_non_negative_int, metavar="N",
                   help="threads one model call may use; 0 = TensorFlow's choice (all cores), "
                   "default: the cores left after the event loop's, shared among "
                   "--num-batch-threads, at least 1")
    p.add_argument("--tensorflow-inter-op-parallelism", "--tensorflow_inter_op_parallelism",
                   type=_non_negative_int, metavar="N",
                   help="threads running independent ops; 0 = TensorFlow's choice, "
                   "default: --num-batch-threads")
    p.add_argument("--file-system-poll-wait-seconds", "--file_system_poll_wait_seconds",
                   type=_non_negative, default=2.0,
                   help="how often to look for new versions; 0 loads once at start (default 2)")
    p.add_argument("--num-versions", type=_positive, default=1,
                   help="how many of the newest versions to keep loaded (default 1)")
    p.add_argument("--max-body-bytes", type=_positive, default=16 * 1024 * 1024,
                   help="larger request bodies get 413 (default 16 MiB)")
    p.add_argument("--max-instances", type=_positive, default=1024,
                   help="most examples in one request (default 1024)")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be between 0 and 65535, got {args.port}")
    intra, inter = default_tf_threads(args.num_batch_threads)
    if args.tensorflow_intra_op_parallelism is None:
        args.tensorflow_intra_op_parallelism = intra
    if args.tensorflow_inter_op_parallelism is None:
        args.tensorflow_inter_op_parallelism = inter
    return args


def default_tf_threads(num_batch_threads: int) -> tuple[int, int]:
    """(intra-op, inter-op) threads for a server: a core for the event loop, the rest shared by
    the batch threads, and one inter-op thread per batch thread so their calls never queue."""
    cores = os.cpu_count() or 1
    return max(1, (cores - 1) // num_batch_threads), num_batch_threads


def check_base_path(base: Path) -> None:
    """Fail early, before TensorFlow is imported, on the mistakes a user can fix."""
    if not base.exists():
        raise UserError(
            f"Model base path {base} does not exist. Point --model-base-path at the directory "
            "the export wrote (it holds numbered version directories, e.g. exported/mnist/1/).")
    if not base.is_dir():
        raise UserError(f"Model base path {base} is not a directory.")
    if not discover_versions(base):
        raise UserError(
            f"No model versions found under {base}: expected integer-named directories each "
            "holding a SavedModel (saved_model.pb and variables/), e.g. "
            f"{base / '1'}. Export a model first.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_base_path(args.model_base_path)
        # TensorFlow's C++ start-up chatter would drown the server's own log lines.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from tfpipeline.serving.app import ServerConfig, serve
        from tfpipeline.serving.batching import BatchConfig

        config = ServerConfig(
            model_name=args.model_name,
            base_path=args.model_base_path.resolve(),
            host=args.host,
            port=args.port,
            batching=BatchConfig(enabled=args.enable_batching,
                                 max_batch_size=args.max_batch_size,
                                 timeout_seconds=args.batch_timeout_micros / 1e6),
            num_batch_threads=args.num_batch_threads,
            intra_op_threads=args.tensorflow_intra_op_parallelism,
            inter_op_threads=args.tensorflow_inter_op_parallelism,
            poll_wait_seconds=args.file_system_poll_wait_seconds,
            num_versions=args.num_versions,
            max_body_bytes=args.max_body_bytes,
            max_instances=args.max_instances,
        )
        asyncio.run(serve(config))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
