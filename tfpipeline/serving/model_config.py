"""TF Serving's configuration files, read with TF Serving's own protobuf messages.

  --model_config_file        text `ModelServerConfig` (models, version policies, labels)
  --batching_parameters_file text `BatchingParameters`
  --monitoring_config_file   text `MonitoringConfig` (`prometheus_config { enable path }`)

Files are parsed by `google.protobuf.text_format` into the published messages of
`tensorflow-serving-api`, then turned into the small dataclasses the server works with, so a
file TF Serving accepts is read the same way here and a typo is refused with protobuf's own
line-and-column message. This module imports no TensorFlow.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

from tfpipeline.errors import UserError


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions under a base path to serve: TF Serving's ServableVersionPolicy.

    kind "latest" serves the `num_versions` highest, "all" every version, "specific" exactly
    the listed `versions`.
    """

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def wanted(self, on_disk: list[int]) -> list[int]:
        """The versions to serve among those on disk, newest first."""
        newest_first = sorted(on_disk, reverse=True)
        if self.kind == "all":
            return newest_first
        if self.kind == "specific":
            return [v for v in newest_first if v in self.versions]
        return newest_first  # latest: the caller takes the first num_versions that load


@dataclass(frozen=True)
class ModelSpec:
    """One served model: TF Serving's ModelConfig, reduced to what this server uses."""

    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = field(default_factory=dict, hash=False)


def _parse_text(path: Path, message, flag: str):
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"Cannot read {flag} {path}: {exc.strerror or exc}. "
                        "Check the path.") from None
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise UserError(
            f"{flag} {path} is not a valid text {type(message).__name__} (Error parsing "
            f"text-format {message.DESCRIPTOR.full_name}: {exc}). Fix that line (the format "
            "is TF Serving's; see docs/serving.md for an example).") from None


def read_model_config_file(path: Path) -> list[ModelSpec]:
    """Parse a `--model_config_file` (text ModelServerConfig) into model specs."""
    config = _parse_text(path, model_server_config_pb2.ModelServerConfig(), "--model_config_file")
    return specs_from_proto(config, where=f"--model_config_file {path}")


def specs_from_proto(config, where: str) -> list[ModelSpec]:
    """ModelServerConfig -> model specs; `where` names the source in error messages.

    Relative base paths are taken from the working directory, as TF Serving does.
    """
    kind = config.WhichOneof("config")
    if kind != "model_config_list":
        raise UserError(
            f"{where} has {kind or 'no models'}; this server (like TF Serving's "
            "HandleReloadConfigRequest) takes a model_config_list { config { ... } }.")
    specs, names = [], set()
    for entry in config.model_config_list.config:
        specs.append(_spec_from_proto(entry, where))
        if entry.name in names:
            raise UserError(f"{where} lists model \"{entry.name}\" twice; give each model one "
                            "config entry.")
        names.add(entry.name)
    if not specs:
        raise UserError(f"{where} has an empty model_config_list; list at least one model.")
    return specs


def _spec_from_proto(entry, where: str) -> ModelSpec:
    if not entry.name:
        raise UserError(f"{where}: a config entry has no name; add name: \"...\".")
    if not entry.base_path:
        raise UserError(f"{where}: model \"{entry.name}\" has no base_path; add base_path: "
                        "\"/path/to/exported/model\".")
    platform = entry.model_platform or "tensorflow"
    if platform != "tensorflow":
        raise UserError(f"{where}: model \"{entry.name}\" has model_platform \"{platform}\"; "
                        "only \"tensorflow\" SavedModels are served.")
    base = Path(entry.base_path)
    policy = policy_from_proto(entry.model_version_policy, f"{where}: model \"{entry.name}\"")
    return ModelSpec(entry.name, base.resolve(), policy, dict(entry.version_labels))


def policy_from_proto(proto, where: str) -> VersionPolicy:
    kind = proto.WhichOneof("policy_choice")
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        versions = tuple(sorted(set(proto.specific.versions)))
        if not versions:
            raise UserError(f"{where} has a specific version policy with no versions; list "
                            "them as specific { versions: 1 versions: 2 }.")
        return VersionPolicy("specific", versions=versions)
    if kind == "latest":
        num = proto.latest.num_versions or 1  # TF Serving's default when left at 0
        return VersionPolicy("latest", num_versions=num)
    return VersionPolicy()


# -- --batching_parameters_file -----------------------------------------------------------

def _declare_unshipped_messages() -> dict:
    """TF Serving's `BatchingParameters` and `MonitoringConfig` messages.

    They live in session_bundle_config.proto and monitoring_config.proto, which the published
    tensorflow-serving-api wheel does not ship (only apis/ and part of config/ are in it).
    They are declared here with the upstream package, field names, numbers and types, in a
    private descriptor pool, so that text_format reads these files exactly as TF Serving does
    (an unknown field is refused the same way).
    """
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="tfpipeline/tensorflow_serving_unshipped.proto",
        package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    F = descriptor_pb2.FieldDescriptorProto
    batching = file.message_type.add(name="BatchingParameters")
    for number, name, type_name in [(1, "max_batch_size", "Int64Value"),
                                    (2, "batch_timeout_micros", "Int64Value"),
                                    (3, "max_enqueued_batches", "Int64Value"),
                                    (4, "num_batch_threads", "Int64Value"),
                                    (5, "thread_pool_name", "StringValue")]:
        batching.field.add(name=name, number=number, label=F.LABEL_OPTIONAL, type=F.TYPE_MESSAGE,
                           type_name=f".google.protobuf.{type_name}")
    batching.field.add(name="allowed_batch_sizes", number=6, label=F.LABEL_REPEATED,
                       type=F.TYPE_INT64)
    batching.field.add(name="pad_variable_length_inputs", number=7, label=F.LABEL_OPTIONAL,
                       type=F.TYPE_BOOL)
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, label=F.LABEL_OPTIONAL, type=F.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, label=F.LABEL_OPTIONAL, type=F.TYPE_STRING)
    monitoring = file.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, label=F.LABEL_OPTIONAL,
                         type=F.TYPE_MESSAGE, type_name=".tensorflow.serving.PrometheusConfig")
    pool.Add(file)
    return {name: message_factory.GetMessageClass(
                pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
            for name in ("BatchingParameters", "MonitoringConfig")}


_UNSHIPPED = _declare_unshipped_messages()
BatchingParameters = _UNSHIPPED["BatchingParameters"]
MonitoringConfig = _UNSHIPPED["MonitoringConfig"]


@dataclass(frozen=True)
class BatchingFile:
    """The values a --batching_parameters_file set (None: not set, keep the default)."""

    max_batch_size: int | None = None
    batch_timeout_micros: int | None = None
    max_enqueued_batches: int | None = None
    num_batch_threads: int | None = None
    allowed_batch_sizes: tuple[int, ...] = ()


def read_batching_parameters(path: Path) -> BatchingFile:
    proto = _parse_text(path, BatchingParameters(), "--batching_parameters_file")
    where = f"--batching_parameters_file {path}"

    def value(name: str) -> int | None:
        if not proto.HasField(name):
            return None
        number = getattr(proto, name).value
        if number < (0 if name == "batch_timeout_micros" else 1):
            raise UserError(f"{where}: {name} is {number}; it must be "
                            f"{'0 or more' if name == 'batch_timeout_micros' else 'at least 1'}.")
        return number

    if proto.HasField("thread_pool_name"):
        # TF Serving shares a named pool among models; here every model call already runs in one
        # pool, sized by num_batch_threads, so the name changes nothing. Say so instead of dropping it.
        print(f"warning: {where}: thread_pool_name \"{proto.thread_pool_name.value}\" is ignored: this server "
              "runs every model's calls in one thread pool of num_batch_threads threads.", file=sys.stderr)
    if proto.pad_variable_length_inputs:
        raise UserError(f"{where}: pad_variable_length_inputs is not supported (this server "
                        "merges only inputs whose shapes agree apart from the batch size); "
                        "remove it.")
    result = BatchingFile(value("max_batch_size"), value("batch_timeout_micros"),
                          value("max_enqueued_batches"), value("num_batch_threads"),
                          tuple(proto.allowed_batch_sizes))
    sizes = result.allowed_batch_sizes
    if sizes:
        if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
            raise UserError(f"{where}: allowed_batch_sizes {list(sizes)} must be positive and "
                            "strictly increasing.")
        if result.max_batch_size is not None and sizes[-1] != result.max_batch_size:
            raise UserError(f"{where}: the last allowed_batch_sizes entry ({sizes[-1]}) must "
                            f"equal max_batch_size ({result.max_batch_size}), as in TF Serving.")
    return result


# -- --monitoring_config_file -------------------------------------------------------------

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's default


def read_monitoring_config(path: Path) -> str | None:
    """The Prometheus path a --monitoring_config_file enables, or None when not enabled."""
    config = _parse_text(path, MonitoringConfig(), "--monitoring_config_file")
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    metrics_path = prometheus.path or DEFAULT_PROMETHEUS_PATH
    if not metrics_path.startswith("/") or metrics_path.startswith("/v1/"):
        raise UserError(f"--monitoring_config_file {path}: prometheus_config path "
                        f"\"{metrics_path}\" must start with / and not with /v1/ (the model API).")
    return metrics_path
