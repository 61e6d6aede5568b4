"""Exceptions raised by utkface_data."""

from __future__ import annotations

__all__ = ["DatasetError", "MalformedNameError"]


class DatasetError(ValueError):
    """A dataset folder, index or split file cannot be used (the message says which file and why)."""


class MalformedNameError(ValueError):
    """A file name does not follow UTKFace's ``age_gender_race_datetime.jpg`` pattern.

    ``name`` is the offending file name and ``reason`` a short explanation (also in the message).
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"malformed UTKFace file name {name!r}: {reason}")
        self.name = name
        self.reason = reason
