"""Helpers the benchmark scripts share: where the real data lives, labelled subsets, JSON output."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def gtsrb_mini() -> Path | None:
    """../shared/data/gtsrb-mini beside the checkout, or $EDGETL_GTSRB_MINI."""
    path = Path(os.environ.get("EDGETL_GTSRB_MINI", ROOT.parent / "shared" / "data" / "gtsrb-mini"))
    return path if (path / "train").is_dir() and (path / "test").is_dir() else None


def subset(src: Path, dst: Path, per_class: int) -> Path:
    """The first `per_class` images (sorted by name) of each class, as symlinks: a labelled budget."""
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        out = dst / cls.name
        out.mkdir(parents=True)
        for img in sorted(cls.iterdir())[:per_class]:
            (out / img.name).symlink_to(img.resolve())
    return dst


def emit(record: dict) -> None:
    """One JSON line on stdout: the benchmark's figures, measured side by side in this run."""
    print(json.dumps(record), flush=True)


def skip(name: str, reason: str) -> None:
    emit({"benchmark": name, "skipped": reason})
    sys.exit(0)
