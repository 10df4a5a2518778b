"""Canonical JSON (RFC 8785 style): the exact bytes that are hashed, signed and timestamped.

Sorted keys, no insignificant whitespace, UTF-8 without escaping non-ASCII, integral floats as integers.
Other floats use Python's shortest round-trip form, which matches ECMAScript except for exponents
(1e-07 vs 1e-7); verifiers always hash the stored bytes and never re-serialize, so this cannot bite.
NaN and infinities are refused.
"""

from __future__ import annotations

import json
import math
from typing import Any

from evidence.errors import UsageError


def _check(value: Any, path: str = "$") -> None:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UsageError(f"canonical JSON cannot hold {value!r} at {path}")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UsageError(f"canonical JSON keys must be strings, not {key!r} at {path}")
            _check(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")


def _normalise(value: Any) -> Any:
    # RFC 8785 numbers follow ECMAScript: 1.0 prints as 1.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _normalise(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(item) for item in value]
    return value


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 bytes of a JSON value."""
    _check(value)
    return json.dumps(
        _normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
