"""The keys of a calibration set file (calibration/NAME.toml, or a pipeline's [calibration] table),
apart from the code that reads its images, so that checking a file needs no torch."""

from __future__ import annotations

from dataclasses import dataclass

MIN_SAMPLES = 32  # fewer images leave activation ranges to chance
HINT = 'a minimal set is: data = "DIR", samples = 256, seed = 0'


@dataclass(frozen=True)
class SetFile:
    """A calibration file as written, key for key (the schema it is checked against)."""

    data: str | None = None
    list: str | None = None
    samples: int = 256
    seed: int = 0
    description: str = ""
