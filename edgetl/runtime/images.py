"""Whatever the application hands over (file paths, PIL images, uint8 arrays) as one uint8 NHWC
batch at the model's input size, resized the way training resized.

numpy only, except that decoding a file or resizing needs Pillow, imported when that is asked
for (on the device too: pycoral's examples rely on it the same way). Float pixels are refused:
the bundle normalises, and guessing whether floats are 0-1 or 0-255 is how silent accuracy
loss starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from edgetl.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp")


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise InputError("decoding image files or resizing needs Pillow",
                         "pip install pillow, or pass uint8 HxWx3 arrays at the model's size") from None
    return Image, ImageOps


def fit(im, size: tuple[int, int], resize: str, interpolation: str = "bilinear"):
    """A PIL RGB image at `size` (height, width): "crop" scales the shorter side and centre-crops,
    "stretch" scales the whole image, with the spec's `interpolation` filter (training and the
    device alike: both decode here)."""
    Image, ImageOps = _pil()
    h, w = size
    if im.size == (w, h):
        return im
    method = getattr(Image.Resampling, interpolation.upper())
    if resize == "crop":
        return ImageOps.fit(im, (w, h), method=method)
    return im.resize((w, h), method)


def decode(path: str | Path, size: tuple[int, int], resize: str, interpolation: str = "bilinear") -> np.ndarray:
    """One image file as RGB uint8 HWC at `size`; raises on a bad file. The one image decoder:
    training, calibration, export checks and the device all read images through it."""
    Image, _ = _pil()
    with Image.open(path) as im:
        return np.asarray(fit(im.convert("RGB"), size, resize, interpolation), dtype=np.uint8)


def _array(a: np.ndarray, size: tuple[int, int], resize: str, what: str, interpolation: str = "bilinear"
           ) -> np.ndarray:
    if a.dtype != np.uint8:
        raise InputError(f"{what} is {a.dtype}; the model takes uint8 pixels (0-255)",
                         "pass the decoded image as uint8: the bundle does the normalisation")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)  # grayscale camera frame
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise InputError(f"{what} has shape {a.shape}; expected HxWx3 (RGB), HxWx4 (RGBA) or HxW",
                         "pass one image per array, channels last")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{what} is empty: shape {a.shape}", "pass an image with at least one pixel")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]  # alpha carries no class information
    if a.shape[:2] != tuple(size):
        Image, _ = _pil()
        a = np.asarray(fit(Image.fromarray(a), size, resize, interpolation), dtype=np.uint8)
    return a


def as_batch(images, size: tuple[int, int], resize: str = "stretch", interpolation: str = "bilinear") -> np.ndarray:
    """`images` (one or a sequence of: path, PIL image, uint8 HxWxC array; or an NxHxWx3 uint8
    array) -> uint8 NHWC at `size`."""
    if isinstance(images, np.ndarray) and images.shape == (*size, 3) and images.dtype == np.uint8:
        return images[None]  # one frame already at the model's size: a view, no copy
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.shape[1:] == (*size, 3) and images.dtype == np.uint8 and len(images):
            return np.ascontiguousarray(images)  # a batch already at the model's size: as it is (if contiguous)
        if len(images) == 0:
            raise InputError(f"no images given: an array of shape {images.shape}", "pass at least one image")
        return np.stack([_array(a, size, resize, f"image {i}", interpolation) for i, a in enumerate(images)])
    if isinstance(images, str | Path | np.ndarray) or hasattr(images, "convert"):
        images = [images]
    if not isinstance(images, Sequence | Iterable):
        raise InputError(f"cannot read images from a {type(images).__name__}",
                         "pass paths, PIL images or uint8 HxWx3 arrays")
    out = []
    for i, item in enumerate(images):
        if isinstance(item, str | Path):
            try:
                out.append(decode(item, size, resize, interpolation))
            except InputError:
                raise
            except Exception as exc:  # Pillow raises many types for a bad file
                raise InputError(f"cannot read image {item}: {type(exc).__name__}",
                                 "pass a readable PNG/JPEG/BMP/PPM file") from None
        elif hasattr(item, "convert"):  # a PIL image
            out.append(np.asarray(fit(item.convert("RGB"), size, resize, interpolation), dtype=np.uint8))
        elif isinstance(item, np.ndarray):
            out.append(_array(item, size, resize, f"image {i}", interpolation))
        else:
            raise InputError(f"image {i} is a {type(item).__name__}", "pass paths, PIL images or uint8 arrays")
    if not out:
        raise InputError("no images given", "pass at least one image")
    return np.stack(out)


def read_files(paths: Sequence[str | Path], size: tuple[int, int], resize: str = "stretch",
               interpolation: str = "bilinear") -> tuple[np.ndarray, list[int], list[tuple[Path, str]]]:
    """Decode `paths`, skipping the unreadable ones as training does: (uint8 NHWC of those read,
    their indices in `paths`, [(path, why)] of those skipped)."""
    _pil()  # no Pillow is one clear error, not every file skipped
    pixels, kept, skipped = [], [], []
    for i, path in enumerate(paths):
        try:
            pixels.append(decode(path, size, resize, interpolation))
            kept.append(i)
        except Exception as exc:  # Pillow raises many types for a bad file; all mean "unreadable"
            skipped.append((Path(path), f"{type(exc).__name__}: {exc}".splitlines()[0][:200]))
    h, w = size
    return (np.stack(pixels) if pixels else np.zeros((0, h, w, 3), np.uint8)), kept, skipped


def labelled_folder(root: str | Path) -> tuple[list[Path], list[str]]:
    """(image paths, labels) of an ImageFolder dir: ROOT/<label>/*.png|jpg|jpeg|ppm|bmp."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a directory", "pass DIR/<label>/*.png, one folder per label")
    paths, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            paths.append(path)
            labels.append(folder.name)
    if not paths:
        raise InputError(f"no labelled images in {root}", "expected DIR/<label>/*.png, one folder per label")
    return paths, labels


def image_files(root: str | Path) -> list[Path]:
    """Every image file under ROOT (any depth, sorted): unlabelled frames, whatever their folders say."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a directory", "pass a folder of frames (PNG/JPEG/BMP/PPM)")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(f"no images in {root}", "pass a folder of frames (PNG/JPEG/BMP/PPM)")
    return paths
