"""Field types of the JSON bodies that hold exactly to their schema (the models are strict: ``0`` is not a boolean and
``"7"`` is not a number), with the one thing JSON Schema calls an integer that strict pydantic would not take:
a number with a zero fraction, ``20.0``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field


def _integral(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def json_int(**constraints: Any) -> Any:
    """An integer field with ``Field`` constraints (``ge``, ``le`` ...). The constraints come before the validator,
    so that they land on the integer itself and the schema reads ``minimum``/``maximum``."""
    return Annotated[int, Field(**constraints), BeforeValidator(_integral)]
