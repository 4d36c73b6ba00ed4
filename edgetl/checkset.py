"""A bundle's checkset: a few labelled images per class that travel with the bundle, so that
`edgetl check` can score the model on the device itself, where the engine and its kernels
are the device's own.

Stored as uint8 pixels already at the model's input size (`checkset.npz`: `pixels` NHWC and
`labels`), so the device needs no image decoder, and written byte-for-byte the same for the
same inputs (fixed zip times), so the bundle stays reproducible. Taken from the run's test
split, or its val split when it has no test set; a run whose images are gone gets none. A bundle made
from a model file (`edgetl bundle from-model --data DIR`) takes them from the images given.
"""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np

from edgetl.errors import ConfigError, EdgetlError
from edgetl.rundir import RunDir
from edgetl.runtime.manifest import Checkset
from edgetl.runtime.tokens import TextSpec

FILE = "checkset.npz"
PER_CLASS = 4  # at least this many per class by default
IMAGES = 100  # by default enough per class for this many in all: one image is then 1 point of top-1
MAX_MB = 16  # raw pixels: about 100 images at 224 px, all of them at the usual small sizes


def per_class_for(classes: int, asked: int | None = None) -> int:
    """Images per class to take: `asked` (`--checkset-per-class`), else enough for IMAGES in all and at
    least PER_CLASS, so the default resolves about 1 point of top-1 whatever the number of classes."""
    if asked is None:
        return max(PER_CLASS, math.ceil(IMAGES / max(classes, 1)))
    if isinstance(asked, bool) or not isinstance(asked, int) or asked < 1:
        raise ConfigError(f"--checkset-per-class must be a whole number >= 1, not {asked!r}",
                          f"e.g. --checkset-per-class {PER_CLASS}; the default takes enough for {IMAGES} images")
    return asked


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz of `arrays` whose bytes depend only on them (fixed zip times): bundles stay reproducible."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, array in arrays.items():
            member = io.BytesIO()
            array = np.asarray(array)  # (not ascontiguousarray: it makes a 0-d array 1-d)
            np.lib.format.write_array(member, array if array.flags.c_contiguous else array.copy(order="C"),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, member.getvalue())
    return out.getvalue()


def build(run: Path, out: Path, *, per_class: int | None = None, seed: int = 0) -> Checkset | None:
    """Write `out` (checkset.npz) from the run's own held-out images, `per_class` of each class (see
    `per_class_for`); returns its manifest entry, or None when the run's test and val images cannot be
    found any more."""
    from edgetl.data.imagefolder import load_images
    from edgetl.train.run import recorded_split, stratified

    d = RunDir(run)
    record, classes, spec = d.record, d.labels, d.spec
    per_class = per_class_for(len(classes), per_class)
    if isinstance(spec, TextSpec):
        return _texts(run, out, per_class, seed)
    for split in ("test", "val"):
        try:
            samples = recorded_split(run, record, classes, split)
        except (EdgetlError, OSError, KeyError):
            continue
        if samples:
            break
    else:
        return None
    h, w = spec.size
    cap = max(len(classes), int(MAX_MB * 2**20 // (h * w * 3)))
    chosen = stratified(samples, min(per_class * len(classes), cap), seed)
    capped = cap if per_class * len(classes) > cap and len(samples) > cap else None
    loaded = load_images(chosen, spec.size, spec.resize, interpolation=spec.interpolation)
    if len(loaded.labels) == 0:
        return None
    labels = np.array([classes[i] for i in loaded.labels])
    out.write_bytes(npz_bytes({"pixels": loaded.images, "labels": labels}))
    return Checkset(file=out.name, images=int(len(labels)), from_=f"run {split} split", per_class=per_class,
                    capped_at=capped)


def _texts(run: Path, out: Path, per_class: int, seed: int) -> Checkset | None:
    """A text run's checkset: `per_class` of its test (else val) sentences per class, as text (`texts`,
    `labels`), so the device's own tokenizer is checked with its engine."""
    from edgetl.data.text import stratified
    from edgetl.train.text import recorded_split

    d = RunDir(run)
    for split in ("test", "val"):
        try:
            data = recorded_split(d.record, d.labels, split)
        except (EdgetlError, OSError):
            continue
        if len(data):
            break
    else:
        return None
    chosen = stratified(data, per_class, seed)
    texts = np.array(chosen.texts)  # fixed-width unicode: no pickle
    labels = np.array([d.labels[i] for i in chosen.labels])
    out.write_bytes(npz_bytes({"texts": texts, "labels": labels}))
    return Checkset(file=out.name, images=int(len(labels)), from_=f"run {split} split", per_class=per_class)


def from_images(pixels: np.ndarray, labels: list[str], out: Path, source: str, *, per_class: int = PER_CLASS,
                seed: int = 0) -> Checkset | None:
    """Write `out` from uint8 NHWC `pixels` (already at the model's size) and their `labels`: up to
    `per_class` of each label, chosen with `seed`; returns its manifest entry (None without images)."""
    if len(labels) == 0:
        return None
    rng = np.random.default_rng(seed)
    names = np.asarray(labels)
    cap = max(len(set(labels)), int(MAX_MB * 2**20 // int(np.prod(pixels.shape[1:]))))
    take = max(1, min(per_class, cap // len(set(labels))))
    chosen = np.sort(np.concatenate([rng.permutation(np.flatnonzero(names == c))[:take]
                                     for c in dict.fromkeys(labels)]))
    out.write_bytes(npz_bytes({"pixels": np.ascontiguousarray(pixels[chosen]), "labels": names[chosen]}))
    return Checkset(file=out.name, images=int(len(chosen)), from_=source, per_class=take)
