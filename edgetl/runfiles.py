"""Reading the small JSON files a run dir holds (labels, preprocessing, stage records), so that a
damaged one is a one-line RunError naming it, never a JSONDecodeError or KeyError traceback."""

from __future__ import annotations

import json
import math
from pathlib import Path

from edgetl.errors import RunError

HINT = "the run is damaged; fine-tune again or restore it"


def damaged(path: Path, why: str) -> RunError:
    return RunError(f"{path} is damaged: {why}", HINT)


def read_json(path: str | Path, kind: type = dict, keys: tuple[str, ...] = ()):
    """`path`'s JSON value, which must be a `kind` (dict or list) and, for a dict, hold `keys`."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise damaged(path, f"not valid JSON ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(value, kind):
        raise damaged(path, f"expected a JSON {'object' if kind is dict else 'list'}, found {type(value).__name__}")
    missing = [k for k in keys if k not in value] if isinstance(value, dict) else []
    if missing:
        raise damaged(path, f"missing {', '.join(missing)}")
    return value


def read_labels(path: str | Path) -> tuple[str, ...]:
    """labels.json: the class names in label order, a non-empty list of distinct strings."""
    labels = read_json(path, list)
    if not labels or not all(isinstance(c, str) for c in labels) or len(set(labels)) != len(labels):
        raise damaged(Path(path), "expected a list of distinct class names")
    return tuple(labels)


def read_spec(path: str | Path):
    """preprocess.json as a PreprocessSpec."""
    from edgetl.runtime.preprocess import PreprocessSpec

    path = Path(path)
    read_json(path, dict)
    try:
        spec = PreprocessSpec.from_json(path.read_text())
    except (TypeError, ValueError, KeyError) as exc:
        raise damaged(path, f"not a preprocessing spec ({exc.__class__.__name__}: {exc})") from None
    why = _spec_problem(spec)
    if why:
        raise damaged(path, why)
    return spec


def _numbers(values, n: int) -> bool:
    return (isinstance(values, tuple) and len(values) == n
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values))


def _spec_problem(spec) -> str | None:
    """What makes a spec unusable (the shapes every stage relies on), or None."""
    if not (_numbers(spec.size, 2) and all(isinstance(v, int) and 8 <= v <= 4096 for v in spec.size)):
        return f"size must be two whole numbers of pixels (8..4096), not {list(spec.size)!r}"
    if not _numbers(spec.mean, 3):
        return f"mean must be 3 finite numbers (one per channel), not {list(spec.mean)!r}"
    if not (_numbers(spec.std, 3) and all(v > 0 for v in spec.std)):
        return f"std must be 3 finite numbers > 0, not {list(spec.std)!r}"
    return None


def check_run(path: str | Path, record: str = "finetune.json") -> dict:
    """Read every small file of a run dir once (its record, labels and preprocessing spec) so that
    later readers meet only sound files; returns the run record."""
    path = Path(path)
    out = read_json(path / record, dict, ("backbone",))
    labels = read_labels(path / "labels.json")
    read_spec(path / "preprocess.json")
    if (path / "head.npz").exists():
        read_head(path / "head.npz", len(labels))
    return out


def read_head(path: Path, classes: int) -> None:
    """head.npz: W (classes x dim) and b (classes), finite; what a bundle ships as its head."""
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            W, b = np.asarray(data["W"]), np.asarray(data["b"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise damaged(path, f"not a head ({exc.__class__.__name__})") from None
    if W.ndim != 2 or W.shape[0] != classes or b.shape != (classes,) or not np.isfinite(W).all():
        raise damaged(path, f"W {W.shape} and b {b.shape} do not fit {classes} classes, or hold NaN/inf")
