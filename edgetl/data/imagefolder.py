"""ImageFolder datasets (`DIR/<class>/*.png|jpg|ppm|bmp`): scanning, and decoding them once.

Every image is decoded and resized up front, so an unreadable file is found (and reported
by path) before training starts, never mid-epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.errors import DataError
from edgetl.runtime.images import IMAGE_SUFFIXES, decode

LAYOUT_HINT = "expected DIR/<class>/*.png|jpg|ppm|bmp, one folder per class"


@dataclass(frozen=True)
class ImageFolder:
    """A scanned dataset: class names in label order and (path, label) samples."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[tuple[Path, int], ...]

    def counts(self) -> list[int]:
        out = [0] * len(self.classes)
        for _, label in self.samples:
            out[label] += 1
        return out


@dataclass(frozen=True)
class LoadedImages:
    """Decoded images as uint8 NHWC at the model's input size, with labels and what was skipped."""

    images: np.ndarray
    labels: np.ndarray
    paths: tuple[Path, ...]
    skipped: tuple[tuple[Path, str], ...]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan(root: str | Path, classes: Sequence[str] | None = None, *, what: str = "data") -> ImageFolder:
    """Scan an ImageFolder tree.

    With `classes` given (a val or test dir scanned against the training classes), the
    dir may hold a subset of them but no class the model does not know.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{what} dir {root} does not exist", LAYOUT_HINT)
    if not root.is_dir():
        raise DataError(f"{what} dir {root} is not a directory", LAYOUT_HINT)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        loose = _image_files(root)
        detail = f" (it holds {len(loose)} loose images)" if loose else ""
        raise DataError(f"{what} dir {root} has no class folders{detail}", LAYOUT_HINT)
    files = {d.name: _image_files(d) for d in class_dirs}
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise DataError(
            f"{what} dir {root}: class folder(s) {', '.join(empty)} hold no images",
            f"remove them or add images; readable suffixes are {', '.join(IMAGE_SUFFIXES)}",
        )
    if classes is None:
        if len(class_dirs) < 2:
            raise DataError(
                f"{what} dir {root} has only one class ({class_dirs[0].name}); a classifier needs at least 2",
                LAYOUT_HINT,
            )
        classes = tuple(d.name for d in class_dirs)
    else:
        unknown = sorted(set(files) - set(classes))
        if unknown:
            raise DataError(
                f"{what} dir {root} has classes the training data does not: {', '.join(unknown)}",
                "val/test class folders must be named like the training class folders",
            )
        classes = tuple(classes)
    index = {name: i for i, name in enumerate(classes)}
    samples = tuple((path, index[name]) for name, paths in files.items() for path in paths)
    return ImageFolder(root=root, classes=classes, samples=samples)


@dataclass(frozen=True)
class ClassCount:
    """One class folder's images: how many decode, and how many are unreadable (training skips those)."""

    readable: int
    unreadable: int


def readable(path: Path) -> bool:
    """Whether `path` opens as an image: its header and structure are checked (PIL `verify`), without
    decoding the pixels, so a whole dataset is checked in a moment."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # PIL raises many types for bad files; all mean "unreadable"
        return False


def readable_counts(folder: ImageFolder, *, workers: int = 4,
                    progress: Callable[[int], None] | None = None) -> list[ClassCount]:
    """Per class (in label order), the images that open and those that do not."""
    good, bad = [0] * len(folder.classes), [0] * len(folder.classes)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (_, label), ok in zip(folder.samples, pool.map(readable, [p for p, _ in folder.samples]), strict=True):
            (good if ok else bad)[label] += 1
            if progress:
                progress(1)
    return [ClassCount(g, b) for g, b in zip(good, bad, strict=True)]


def load_images(
    samples: Sequence[tuple[Path, int]],
    size: tuple[int, int],
    resize: str = "stretch",
    *,
    interpolation: str = "bilinear",
    strict: bool = False,
    workers: int = 4,
    progress: Callable[[int], None] | None = None,
) -> LoadedImages:
    """Decode `samples` in parallel. Unreadable files are skipped and listed, or refused with `strict`."""

    def one(sample):
        path, _ = sample
        try:
            return decode(path, size, resize, interpolation), None
        except Exception as exc:  # PIL raises many types for bad files; all mean "unreadable"
            return None, f"{type(exc).__name__}: {exc}".splitlines()[0]

    images, labels, paths, skipped = [], [], [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (path, label), (array, problem) in zip(samples, pool.map(one, samples), strict=True):
            if progress:
                progress(1)
            if problem is not None:
                if strict:
                    raise DataError(f"unreadable image {path}: {problem}",
                                    "fix or remove it, or drop --strict to skip it")
                skipped.append((path, problem))
                continue
            images.append(array)
            labels.append(label)
            paths.append(path)
    h, w = size
    stack = np.stack(images) if images else np.zeros((0, h, w, 3), np.uint8)
    return LoadedImages(stack, np.asarray(labels, np.int64), tuple(paths), tuple(skipped))
