"""argparse value types shared by every command line (pipelines, serve, predict).

Each raises `argparse.ArgumentTypeError` with a message that names what was expected and what
was given, so argparse prints "argument --epochs: must be a positive whole number, got 0"
instead of its generic "invalid positive_int value".
"""

from __future__ import annotations

import argparse
import json
import math


def _number(text: str, kind, expected: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _number(text, int, "a positive whole number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "0 or a positive whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive whole number, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a positive number")
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float, "0 or a positive number")
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be 0 or a positive finite number, got {text}")
    return value


def fraction(text: str) -> float:
    """A share in (0, 1]."""
    value = _number(text, float, "a number in (0, 1]")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def open_fraction(text: str) -> float:
    """A share in (0, 1), e.g. of a split held out: neither side may be empty."""
    value = _number(text, float, "a number between 0 and 1")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def at_least(minimum: int, why: str):
    """A whole number >= `minimum`; `why` says what the bound is for."""

    def parse(text: str) -> int:
        value = _number(text, int, f"a whole number of at least {minimum}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} ({why}), got {value}")
        return value

    parse.__name__ = f"at_least_{minimum}"
    return parse


def port(text: str) -> int:
    """A TCP port; 0 lets the system pick a free one."""
    value = _number(text, int, "a port number from 0 to 65535")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value}")
    return value


def host_port(text: str) -> str:
    """`HOST:PORT` (a gRPC target such as 127.0.0.1:8500)."""
    host, sep, number = text.rpartition(":")
    if not sep or not host or not number.isdigit() or not 0 < int(number) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:8500), got {text!r}")
    return text


def batch_range(text: str) -> tuple[int, int]:
    """`START,END`: training batches counted from 1, END included."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected START,END (two batch numbers), got {text!r}")
    try:
        start, end = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two whole numbers START,END, got {text!r}") from None
    return start, end  # the range: PipelineConfig.validate


def key_value(text: str) -> tuple[str, object]:
    """`KEY=VALUE`, VALUE read as JSON when it parses (numbers, true/false, lists), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def names(text: str) -> tuple[str, ...]:
    """`A,B,...`: column names (spaces around each are dropped)."""
    found = tuple(name.strip() for name in text.split(",") if name.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"expected one or more column names A,B,..., got {text!r}")
    return found


def boolean(text: str) -> bool:
    """TF Serving's spelling of booleans: `--enable_batching=true|false` (also 1/0, yes/no)."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def image_size(text: str) -> tuple[int, int]:
    """`HxW` (or one number for a square): an image's (height, width), each at least 4."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 4:
        raise argparse.ArgumentTypeError(f"expected HxW with both at least 4, such as 32x32 or 64x48, got {text!r}")
    return values[0], values[1]


def byte_size(text: str) -> int:
    """`512M`, `2G`, `1.5GiB`, `0`: a number of bytes (K, M, G, T are powers of 1024)."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    factor = 1
    for power, unit in enumerate("KMGT", start=1):
        if value.endswith(unit):
            value, factor = value[:-1], 1024**power
            break
    number = _number(value, float, "a size such as 512M or 2G")
    if not number >= 0 or math.isinf(number):
        raise argparse.ArgumentTypeError(f"expected a size of 0 or more, such as 512M or 2G, got {text!r}")
    return int(number * factor)
