"""Calibration sets: which real images set the int8 ranges, written down so anyone can reproduce them.

A set is a TOML file in `calibration/`:

    data = "../data/gtsrb-mini/train"   # ImageFolder dir, relative to this file or absolute
    # list = "calib.txt"                # or: a list file, one image path per line (class = parent folder)
    samples = 256                       # how many images
    seed = 0                            # which ones: a seeded shuffle per class, taken round-robin

Images are chosen stratified per class, decoded with the run's own preprocessing, and every
chosen image must be readable. Random inputs are never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tomllib

from edgetl import config
from edgetl.calibration_file import HINT, MIN_SAMPLES, SetFile
from edgetl.data.imagefolder import IMAGE_SUFFIXES, load_images, scan
from edgetl.errors import ConfigError, DataError
from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.train.run import stratified


@dataclass(frozen=True)
class CalibrationSet:
    file: Path
    source: Path  # the data dir or list file, resolved
    kind: str  # "data" | "list"
    samples: int
    seed: int
    description: str = ""


@dataclass(frozen=True)
class Selection:
    """What a set resolves to: the chosen (path, class) samples and the classes they span."""

    calib: CalibrationSet
    classes: tuple[str, ...]
    chosen: tuple[tuple[Path, int], ...]
    available: int

    def per_class(self) -> dict[str, int]:
        counts = np.bincount([label for _, label in self.chosen], minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts, strict=True)}


def read(file: str | Path) -> CalibrationSet:
    file = Path(file)
    if file.is_dir():
        raise ConfigError(f"{file} is a directory, not a calibration set",
                          "pass a calibration .toml file, e.g. calibration/NAME.toml (" + HINT + ")")
    if not file.is_file():
        raise ConfigError(f"calibration file {file} does not exist", "calibration sets live in calibration/*.toml")
    try:
        raw = tomllib.loads(file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}", HINT) from None
    spec = config.parse(SetFile, raw, file)
    if (spec.data is None) == (spec.list is None):
        raise ConfigError(f"{file}: give exactly one of `data` (a dir) or `list` (a file)", HINT)
    if spec.samples < MIN_SAMPLES:
        raise ConfigError(f"{file}: samples = {spec.samples} is too small for calibration",
                          f"use at least {MIN_SAMPLES} (256-512 is typical)")
    kind = "data" if spec.data is not None else "list"
    source = Path(getattr(spec, kind)).expanduser()
    source = source if source.is_absolute() else (file.parent / source)
    return CalibrationSet(file, source.resolve(), kind, spec.samples, spec.seed, spec.description)


def _list_samples(calib: CalibrationSet) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    if not calib.source.is_file():
        raise DataError(f"{calib.file}: list file {calib.source} does not exist", "list = a file of image paths")
    try:
        text = calib.source.read_text()
    except UnicodeDecodeError:
        raise DataError(f"{calib.file}: list file {calib.source} is not UTF-8 text",
                        "list = a text file with one image path per line") from None
    paths = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line) if Path(line).is_absolute() else calib.source.parent / line
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{calib.source}:{n}: {line} is not an image file",
                            f"readable suffixes are {', '.join(IMAGE_SUFFIXES)}")
        paths.append(path)
    classes = tuple(sorted({p.parent.name for p in paths}))
    index = {c: i for i, c in enumerate(classes)}
    return classes, [(p, index[p.parent.name]) for p in paths]


def select(calib: CalibrationSet) -> Selection:
    """Resolve a set to the images it names, refusing one that is too small or single-class."""
    if calib.kind == "data":
        folder = scan(calib.source, what="calibration") if calib.source.is_dir() else None
        if folder is None:
            raise DataError(f"{calib.file}: data dir {calib.source} does not exist", HINT)
        classes, samples = folder.classes, list(folder.samples)
    else:
        classes, samples = _list_samples(calib)
    if len({label for _, label in samples}) < 2:
        raise DataError(f"{calib.file}: every calibration image is of one class ({', '.join(classes) or 'none'})",
                        "calibrate on images of all the classes the model will see")
    if len(samples) < calib.samples:
        raise DataError(f"{calib.file}: asks for {calib.samples} samples but {calib.source} holds {len(samples)}",
                        f"lower `samples` (at least {MIN_SAMPLES}) or add images")
    return Selection(calib, classes, tuple(stratified(samples, calib.samples, calib.seed)), len(samples))


def check_readable(selection: Selection) -> None:
    """Decode every chosen image once (small), so `calib show` refuses an unreadable set up front."""
    load_images_strict(selection, (32, 32), "stretch")


def load_images_strict(selection: Selection, size: tuple[int, int], resize: str, interpolation: str = "bilinear"
                       ) -> np.ndarray:
    try:
        loaded = load_images(selection.chosen, size, resize, interpolation=interpolation, strict=True)
    except DataError as exc:
        raise DataError(f"{selection.calib.file}: {exc.message}", "fix or remove that image; calibration "
                        "uses every image it names") from None
    return loaded.images


def images(selection: Selection, spec: PreprocessSpec) -> np.ndarray:
    """The chosen images as uint8 NHWC at the run's input size; any unreadable one is an error."""
    return load_images_strict(selection, spec.size, spec.resize, spec.interpolation)
