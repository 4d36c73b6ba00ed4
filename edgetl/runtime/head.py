"""The classifier head on the device: logits = embedding @ W.T + b, read from its .npz.

The bundle ships one (`head.npz`); the head store keeps the ones adapted on the device
(`edgetl.runtime.heads`); `Model` scores with the one in force. numpy only.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.errors import DamagedHead


@dataclass(frozen=True)
class Head:
    """The classifier on the device: logits = embedding @ W.T + b."""

    W: np.ndarray  # (classes, embedding_dim) float32
    b: np.ndarray  # (classes,) float32
    labels: tuple[str, ...]
    version: int = 0

    @classmethod
    def read(cls, path: Path, labels: tuple[str, ...] | None = None) -> Head:
        """A head from an .npz (W, b, optional labels and version); `DamagedHead` when it is damaged."""
        try:
            with np.load(path, allow_pickle=False) as data:
                W, b = np.asarray(data["W"], np.float32), np.asarray(data["b"], np.float32)
                stored = tuple(str(x) for x in data["labels"]) if "labels" in data else None
                version = int(data["version"]) if "version" in data else 0
        except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as exc:
            raise DamagedHead(path, type(exc).__name__) from None
        names = stored or labels
        if W.ndim != 2 or b.shape != (W.shape[0],) or names is None or len(names) != W.shape[0]:
            raise DamagedHead(path, f"W {W.shape}, b {b.shape} and {0 if names is None else len(names)} labels "
                                    "do not fit together")
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise DamagedHead(path, "it holds NaN or inf")
        return cls(W, b, tuple(names), version)

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        return embeddings @ self.W.T + self.b


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
