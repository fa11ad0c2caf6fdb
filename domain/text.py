"""Cleaning of free text that arrives from outside: trimming and dropping control characters."""

from __future__ import annotations

import re
from typing import Any

# C0 controls but tab, newline and carriage return; DEL; C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_text(value: str, *, max_length: int | None = None) -> str:
    """Trimmed, without control characters (NUL included), and cut to `max_length`."""
    cleaned = _CONTROL.sub("", value).strip()
    if max_length is not None and len(cleaned) > max_length:
        cleaned = cleaned[:max_length]
    return cleaned


def clean_json(value: Any) -> Any:
    """Every string inside a JSON-like value cleaned the same way; keys too."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v) for k, v in value.items()}
    return value
