"""What a ComfyUI server answers is data from outside: parse and type-check it into one-line errors."""

from __future__ import annotations

import json
from typing import Any

from ..errors import SonicError


class ComfyConnectionError(SonicError):
    """The ComfyUI server cannot be reached or answered something unexpected."""


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ComfyConnectionError(f"{what}: the server's answer is not JSON ({bytes(data[:80])!r}...)") from None


def expect(value: Any, kind: type, what: str) -> Any:
    """`value` when it is a `kind`, else a one-line `ComfyConnectionError` naming it."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ComfyConnectionError(f"{what}: the server sent a {type(value).__name__} where a {kind.__name__} "
                                   f"belongs (not a ComfyUI server, or an incompatible version?)")
    return value
