"""Presets: JSON files with a "model" section (`DeTRLiteConfig` fields), a "training" section (the recipe,
`arguments.RECIPE_FIELDS`) and, for the synthetic set, a "data" section.

A config keeps unknown keys (as transformers' configs do), so a misspelt key is caught here, naming the closest
valid one.
"""

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..configuration_detr_lite import DeTRLiteConfig
from .arguments import RECIPE_FIELDS

DATA_FIELDS = ("synthetic_dir", "num_train", "num_val", "seed")
_SECTIONS = ("model", "training", "data")


@dataclass
class Preset:
    """A preset file's sections, every key checked against the fields it sets."""

    path: Path
    model: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)


def model_fields() -> tuple[str, ...]:
    """The keys a preset's "model" section may hold: every declared `DeTRLiteConfig` field."""
    return tuple(f.name for f in dataclasses.fields(DeTRLiteConfig))


def read_preset(path: str | Path) -> Preset:
    """Read and check a preset.

    Raises:
        ValueError: the file is missing or not JSON, or a section or key is unknown (naming the closest valid one).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such preset file.")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"--config {path} is not valid JSON: {error}") from error
    check_keys(path, "preset", content, _SECTIONS)
    valid = {"model": model_fields(), "training": RECIPE_FIELDS, "data": DATA_FIELDS}
    for section in _SECTIONS:
        check_keys(path, f'"{section}" section', content.get(section, {}), valid[section])
    return Preset(path, **{section: content.get(section, {}) for section in _SECTIONS})


def check_keys(path: Path, where: str, keys, valid: tuple[str, ...]) -> None:
    """Raise ValueError for the first key not in `valid`, naming the closest valid key (difflib)."""
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" Valid keys: {', '.join(valid)}."
            raise ValueError(f"--config {path}: unknown key {key!r} in the {where}.{hint}")
