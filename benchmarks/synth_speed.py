"""Synthetic road-sign generation speed on one core, per domain, PNG writing included.

Pins this process to one CPU, writes --per-class images per class with the same code as
`edgetl data synth`, and prints one JSON line of images/s for city-a and city-b.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from edgetl.data import synth  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    record = {"benchmark": "synth_speed", "cores": 1, "size": args.size, "classes": len(synth.CLASSES),
              "images_per_domain": args.per_class * len(synth.CLASSES)}
    with tempfile.TemporaryDirectory() as tmp:
        for domain in synth.DOMAINS:
            t0 = time.perf_counter()
            synth.synthesize(Path(tmp) / domain, domain, args.per_class, size=args.size, seed=0)
            record[f"{domain.replace('-', '_')}_images_per_s"] = round(
                args.per_class * len(synth.CLASSES) / (time.perf_counter() - t0), 1)
    emit(record)


if __name__ == "__main__":
    main()
