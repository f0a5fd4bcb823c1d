"""Canonical JSON: one encoding of a JSON value, for hashing, commitments and sealed headers.

Keys are sorted, separators are ``","`` and ``":"`` (no spaces) and every non-ASCII character
is escaped, so equal values give equal bytes whatever the order of their keys. Whether NaN and
infinities are allowed (as the non-standard ``NaN``/``Infinity`` tokens) is each caller's
choice, made explicitly: content digests and sealed manifests allow them (metadata may hold
them), commitments and resume-file bindings refuse them.
"""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any, *, allow_nan: bool) -> bytes:
    """``value`` as canonical JSON: sorted keys, compact separators, ASCII only.

    Args:
        value: a JSON-able value (dicts with string keys, lists, str, numbers, bools, None).
        allow_nan: write NaN and infinities as ``NaN``/``Infinity``; when False they raise.

    Returns:
        The ASCII bytes.

    Raises:
        TypeError: a value JSON cannot hold (the message is :func:`json.dumps`'s).
        ValueError: NaN or an infinity without ``allow_nan``, or a circular reference.

    Example:
        >>> canonical_json({"b": [1, 2.5], "a": "é"}, allow_nan=False)
        b'{"a":"\\\\u00e9","b":[1,2.5]}'
        >>> canonical_json(float("nan"), allow_nan=True)
        b'NaN'
        >>> canonical_json(float("nan"), allow_nan=False)
        Traceback (most recent call last):
        ...
        ValueError: Out of range float values are not JSON compliant...
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=allow_nan).encode("ascii")
