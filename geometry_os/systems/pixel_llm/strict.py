"""The base of every pixel_llm config model: unknown fields are errors and assignments are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["StrictModel"]


class StrictModel(BaseModel):
    """A pydantic model with ``extra="forbid"`` (a typo is a ``ValidationError`` naming the field) and
    ``validate_assignment=True`` (setting a field re-validates it). No field name is reserved."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
