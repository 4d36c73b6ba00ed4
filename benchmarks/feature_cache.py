"""Head epochs on a frozen backbone: cached embeddings vs recomputing the backbone every epoch.

Both arms run the same head epoch (edgetl.train.finetune.head_epoch) on the same images;
the recompute arm embeds the training images again before each epoch, as a loop without
the cache must. Prints one JSON line with per-epoch medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import emit  # noqa: E402

from edgetl.data import load_images, scan, synth  # noqa: E402
from edgetl.runtime.preprocess import PreprocessSpec  # noqa: E402
from edgetl.train.backbones import get_spec, make_head  # noqa: E402
from edgetl.train.features import embed  # noqa: E402
from edgetl.train.finetune import balanced_order, head_epoch  # noqa: E402
from edgetl.train.weights import load_backbone, resolve  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--cached-epochs", type=int, default=30)
    ap.add_argument("--recomputed-epochs", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    spec_b = get_spec("efficientnet_lite0")
    backbone = load_backbone(spec_b, args.img_size, resolve(spec_b, "imagenet"))
    spec = PreprocessSpec(size=(args.img_size,) * 2, mean=spec_b.mean, std=spec_b.std)
    with tempfile.TemporaryDirectory() as tmp:
        folder = scan(synth.synthesize(Path(tmp) / "a", "city-a", args.per_class, size=64, seed=0))
        loaded = load_images(folder.samples, spec.size)
    labels = torch.from_numpy(loaded.labels)
    rng = np.random.default_rng(0)
    embed(backbone, loaded.images, spec)  # warm-up: oneDNN builds kernels per batch shape, once per process

    def run(epochs: int, cached: bool) -> tuple[list[float], float]:
        head = make_head(backbone.embedding_dim, len(folder.classes))
        opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
        t0 = time.perf_counter()
        features = embed(backbone, loaded.images, spec) if cached else None
        once = time.perf_counter() - t0
        times = []
        for _ in range(epochs):
            t = time.perf_counter()
            x = features if cached else embed(backbone, loaded.images, spec)
            head_epoch(head, opt, x, labels, balanced_order(loaded.labels, rng), 32)
            times.append(time.perf_counter() - t)
        return times, once

    cached, embed_once = run(args.cached_epochs, cached=True)
    recomputed, _ = run(args.recomputed_epochs, cached=False)
    c, r = statistics.median(cached), statistics.median(recomputed)
    emit({"benchmark": "feature_cache", "backbone": "efficientnet_lite0", "img_size": args.img_size,
          "images": len(labels), "cached_epoch_ms": round(c * 1e3, 2), "recomputed_epoch_ms": round(r * 1e3, 1),
          "embed_once_ms": round(embed_once * 1e3, 1), "speedup": round(r / c, 1),
          "speedup_incl_embedding_over_30_epochs": round(30 * r / (embed_once + 30 * c), 1)})


if __name__ == "__main__":
    main()
