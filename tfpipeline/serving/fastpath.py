"""A shortcut for the common predict body: integer tensors sent as plain nested lists.

`{"instances": [[[[0], [12], ...]]]}` for a uint8 image input is what nearly every client
sends. Decoding it with `json.loads` makes a Python list for every pixel and `np.array` walks
them all again, which costs more than the rest of the server's work on a small image request
(docs/serving.md has the figures). Here the body's bytes are checked and converted with a few
C-level passes instead (regex, `bytes.translate`, `np.fromstring`).

The shortcut either returns exactly the array the general parser would build or returns
None, and then the general parser handles the body, errors included. It takes a body only
when it can show that the body is valid JSON of the expected shape:
  - the whole body is `{"instances": [...]}` or `{"inputs": [...]}` (one key; anything else,
    such as `signature_name`, a second key or escapes in the key, is left to the general path);
  - the list holds only digits, brackets, commas and JSON whitespace, so no signs, decimal
    points, exponents, strings, null or NaN;
  - no whitespace inside a number position ("1 2" is invalid JSON), no leading zeros ("01");
  - brackets and commas, with each number collapsed to one character, are exactly those of
    a rectangular nested list of shape [n, *instance shape];
  - n is 1..max_instances and every value fits the input's dtype.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from .servable import Signature, TensorInfo

_BODY = re.compile(rb'\s*\{\s*"(instances|inputs)"\s*:\s*(\[[\[\]0-9, \t\n\r]*\])\s*\}\s*')
_WHITESPACE = b" \t\n\r"
# Digits to "0", JSON whitespace to " ": a digit, spaces, a digit is two numbers with no comma.
_DIGITS_AND_SPACES = bytes.maketrans(b"0123456789\t\n\r", b"0000000000   ")
_SPLIT_NUMBER = re.compile(rb"0 +0")
# "0" stays "0", other digits become "1" and "[" becomes ",", so a number with a leading
# zero is ",00" or ",01" wherever it stands.
_LEADING_ZERO = bytes.maketrans(b"123456789[", b"111111111,")
_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_MAX_DIGITS = 18  # longer numbers may not fit int64: left to the general parser


def accepts(signature: Signature) -> TensorInfo | None:
    """The one input the shortcut can fill for this signature, or None."""
    if len(signature.inputs) != 1:
        return None
    info = next(iter(signature.inputs.values()))
    if info.dtype.kind not in "iu" or not info.batched or None in info.shape[1:]:
        return None
    if 0 in info.shape[1:]:  # instances without numbers: nothing to gain, odd to check
        return None
    return info


@lru_cache(maxsize=32)
def _skeleton(shape: tuple[int, ...]) -> bytes:
    """Brackets and commas of a nested list of this shape, each number written as "0"."""
    text = b"0"
    for size in reversed(shape):
        text = b"[" + b",".join([text] * size) + b"]"
    return text


def parse(body: bytes, info: TensorInfo, max_instances: int) -> tuple[np.ndarray, bool] | None:
    """(array, row_format) for a body of plain non-negative integers, else None."""
    match = _BODY.fullmatch(body)
    if match is None:
        return None
    key, values = match.groups()
    spaced = values.translate(_DIGITS_AND_SPACES)
    if b"0 " in spaced and _SPLIT_NUMBER.search(spaced):  # the search only when it may match
        return None
    leading = values.translate(_LEADING_ZERO, _WHITESPACE)
    if b",00" in leading or b",01" in leading:
        return None
    structure = values.translate(_ZEROS, _WHITESPACE)
    if b"0" * (_MAX_DIGITS + 1) in structure:
        return None
    while b"00" in structure:  # each number to one "0"; halves the longest run each time
        structure = structure.replace(b"00", b"0")
    instance = _skeleton(info.shape[1:])
    count = (len(structure) - 1) // (len(instance) + 1)
    if not 1 <= count <= max_instances or structure != b"[" + b",".join([instance] * count) + b"]":
        return None
    # Validated above: after dropping brackets and whitespace this is "n,n,...,n".
    flat = np.fromstring(values.translate(None, b"[]" + _WHITESPACE), dtype=np.int64, sep=",")
    if flat.size != count * int(np.prod(info.shape[1:])) or flat.max() > np.iinfo(info.dtype).max:
        return None  # the general parser reports the out-of-range values
    return flat.astype(info.dtype).reshape((count, *info.shape[1:])), key == b"instances"
