"""Settings are declared once, as dataclass fields; `settings_for` picks a dataclass's own
settings out of a larger mapping (a section of an experiment file, or parsed command-line flags)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


def settings_for(cls, values: Mapping) -> dict:
    """The entries of `values` that are fields of the dataclass `cls` (the rest are other settings')."""
    return {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
