"""Classify files with an exported model, locally or through a running server.

    python -m tfpipeline.predict digit.png other.jpg --model-dir exported/mnist
    python -m tfpipeline.predict digit.png --server http://127.0.0.1:8501 [--model-name mnist]
    python -m tfpipeline.predict digit.png --grpc 127.0.0.1:8500 [--model-name mnist]
    python -m tfpipeline.predict --tflite exported/mnist/1/model_int8.tflite digit.png
    python -m tfpipeline.predict --text "a wonderful film" --model-dir exported/reviews
    python -m tfpipeline.predict rows.csv --model-dir exported/penguins

A thin command: a client (tfpipeline/serving/clients.py) reaches the model, the model's input
spec (tfpipeline/inputs) turns the files into its request, and this module prints one line per
file: class and its probability. The spec comes from the version's metadata.json, or, for a
server (ours or TF Serving) that does not publish it, from `serving_default`'s inputs.

For images: a model with a `serving_bytes` signature gets the files' bytes as they are (the
model decodes and resizes them itself, exactly as in training); an older model, or
--signature-name serving_default, gets pixels converted here to the signature's input. Over
gRPC the default stays `serving_default`. The --server mode talks plain TF Serving REST and
does not import TensorFlow; neither does --tflite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tfpipeline import argtypes, inputs, start_tensorflow_quietly
from tfpipeline import signatures as names
from tfpipeline.errors import UserError, exit_on_error
from tfpipeline.serving import clients

_CHUNK = 256  # examples per request/call: stays under the server's --max-instances default


def _classify(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Class and its probability per example, from `classes` + `probabilities` if present."""
    if names.PROBABILITIES in outputs:
        probabilities = np.asarray(outputs[names.PROBABILITIES], dtype=np.float64)
    elif len(outputs) == 1:
        probabilities = np.asarray(next(iter(outputs.values())), dtype=np.float64)
    else:
        raise UserError(f"Cannot tell which output holds probabilities: {sorted(outputs)}")
    if names.CLASSES in outputs:
        classes = np.asarray(outputs[names.CLASSES]).astype(np.int64).reshape(-1)
    else:
        classes = probabilities.argmax(-1)
    return classes, probabilities[np.arange(len(classes)), classes]


def connect(args: argparse.Namespace):
    """The client for --model-dir, --server, --grpc or --tflite."""
    if args.grpc:
        return clients.GrpcClient(args.grpc, args.model_name)
    if args.server:
        return clients.RestClient(args.server, args.model_name)
    if args.tflite:
        return clients.TFLiteClient(args.tflite)
    return clients.LocalClient(args.model_dir)


def input_spec(client) -> inputs.InputSpec:
    """The model's input spec: from its metadata.json when the client can read it, else from
    `serving_default`'s inputs."""
    metadata = client.metadata()
    record = (metadata or {}).get("dataset", {}).get("input")
    if record is not None:
        return inputs.from_json(record)
    if names.DEFAULT not in client.signatures:
        raise UserError(f"The model {client.where} has no {names.DEFAULT} signature to tell its input from "
                        f"(it has {', '.join(client.signatures)})")
    return inputs.from_signature(client.inputs(names.DEFAULT), where=client.where)


def choose_signature(args: argparse.Namespace, client, spec: inputs.InputSpec) -> str:
    """--signature-name, else the spec's choice; over gRPC `serving_default`, as before."""
    if args.signature_name:
        return args.signature_name
    if args.grpc:  # gRPC sends raw tensors, so pixels cost no JSON; kept as the default there
        return names.DEFAULT
    return spec.choose_signature(client.signatures)


def predict(args: argparse.Namespace) -> int:
    """Classify every source through the chosen signature and print one line each."""
    client = connect(args)
    spec = input_spec(client)
    names_of = _class_names(client)
    signature = choose_signature(args, client, spec)
    signature_inputs = client.inputs(signature)
    # Examples can share a request only when the input fixes every size but the batch's.
    fixed = all(info.shape is not None and None not in info.shape[1:] for info in signature_inputs.values())
    step = _CHUNK if fixed else 1
    sources = [str(source) for source in args.sources]
    read = spec.read
    if args.text:  # the strings themselves, never looked up as files
        if not hasattr(spec, "read_strings"):
            raise UserError(f"--text is for text models; the model {client.where} takes {spec.kind} inputs. "
                            "Give files instead.")
        sources, read = list(args.text), spec.read_strings
    for start in range(0, len(sources), step):
        labels, request = read(sources[start:start + step], signature_inputs)
        classes, probabilities = _classify(client.predict(signature, request))
        for label, cls, prob in zip(labels, classes, probabilities):
            name = f" {names_of[int(cls)]!r}" if int(cls) < len(names_of) else ""
            print(f"{label}: class {int(cls)}{name} (probability {prob:.4f})")
    return 0


def _class_names(client) -> list[str]:
    """The class names from the version's metadata.json, where the client can read it and they
    say more than the index (MNIST's "0".."9" do not); else none (a server reports only indices)."""
    names_of = [str(name) for name in ((client.metadata() or {}).get("dataset", {}).get("class_names") or [])]
    return [] if names_of == [str(i) for i in range(len(names_of))] else names_of


def explain(args: argparse.Namespace) -> int:
    """--explain: the attribution picture of one source, computed on the exported model itself."""
    if args.model_dir is None:
        raise UserError("--explain computes gradients through the model itself: give --model-dir "
                        "(not --server, --grpc or --tflite)")
    if args.signature_name:
        raise UserError("--explain works on the Keras model rebuilt from the export, not through a signature: "
                        "leave out --signature-name")
    sources = args.text or args.sources
    if len(sources) != 1:
        raise UserError(f"--explain explains one input: give one file (or one --text), not {len(sources)}")
    _, version_dir = clients.latest_version_dir(args.model_dir)
    from tfpipeline.report import explain as explanations

    print(explanations.explain_file(version_dir, str(sources[0]), args.explain))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tfpipeline.predict",
                                description="Print the predicted class of each file.")
    p.add_argument("sources", nargs="*", metavar="FILE",
                   help="files to classify (images: PNG, JPEG, GIF, BMP; text: .txt files; tables: CSV/TSV files of "
                        "rows, one prediction per row)")
    p.add_argument("--text", action="append", metavar="TEXT",
                   help="a text model: classify this string (repeatable), instead of files")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-dir", type=Path,
                       help="exported base path (its highest version is used) or a version dir")
    where.add_argument("--server", help="TF Serving REST address, e.g. http://127.0.0.1:8501")
    where.add_argument("--grpc", metavar="HOST:PORT", type=argtypes.host_port,
                       help="TF Serving gRPC address, e.g. 127.0.0.1:8500")
    where.add_argument("--tflite", type=Path, metavar="FILE",
                       help="an int8 model_int8.tflite (--export-tflite), run with the LiteRT interpreter")
    p.add_argument("--model-name", default="mnist", help="model name on the server (default mnist)")
    p.add_argument("--signature-name", default=None,
                   help=f"the signature to call; default: the input's choice (for images {names.IMAGE_BYTES}, "
                        f"the files' bytes, when the model has it, else {names.DEFAULT}, pixels converted here; "
                        f"over --grpc {names.DEFAULT}). A .tflite file has {names.DEFAULT} only")
    p.add_argument("--explain", type=Path, metavar="OUT.png",
                   help="with --model-dir and one file: write the input's attribution for the predicted class "
                        "(for images, beside its integrated-gradients map; docs/explanations.md)")
    args = p.parse_args(argv)
    if bool(args.sources) == bool(args.text):
        p.error("give the files to classify, or --text \"...\" for a text model (not both)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.tflite:  # LiteRT alone runs a .tflite file: TensorFlow is not needed, nor imported
        start_tensorflow_quietly()
    if args.explain is not None:
        return exit_on_error(lambda: explain(args))
    return exit_on_error(lambda: predict(args))


if __name__ == "__main__":
    sys.exit(main())
