"""The classifier head on the device: logits = standardise(features) @ W.T + b, read from its .npz.

The bundle ships one (`head.npz`, the server's, over the embedding alone); the head store keeps
the ones adapted on the device (`edgetl.runtime.heads`), which may read the backbone's taps
too and standardise each feature with a mean and std kept with the head; `Model` scores with
the one in force. A head names the output segments it reads (`taps`, with their widths), so a
bundle whose backbone gives other segments refuses it. numpy only.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from edgetl.errors import DamagedHead
from edgetl.runtime.features import EMBEDDING

KINDS = ("softmax", "ncm")


@dataclass(frozen=True, eq=False)
class Head:
    """The classifier on the device over the segments `taps` of the backbone's output."""

    W: np.ndarray  # (classes, features) float32
    b: np.ndarray  # (classes,) float32
    labels: tuple[str, ...]
    version: int = 0
    taps: tuple[str, ...] = (EMBEDDING,)  # the output segments it reads, in column order
    dims: tuple[int, ...] = ()  # their widths (() : one segment as wide as W)
    mean: np.ndarray | None = None  # per-feature standardisation (None: the features as they come)
    std: np.ndarray | None = None
    kind: str = "softmax"  # what fitted it: softmax regression or nearest class mean (imprinting adds rows to either)

    def __post_init__(self):
        if not self.dims:
            object.__setattr__(self, "dims", (int(self.W.shape[1]),))

    @property
    def width(self) -> int:
        return int(self.W.shape[1])

    @classmethod
    def read(cls, path: Path, labels: tuple[str, ...] | None = None) -> Head:
        """A head from an .npz (W, b; optional labels, version, taps, dims, mean, std, kind); `DamagedHead`
        when it is damaged."""
        try:
            with np.load(path, allow_pickle=False) as data:
                W, b = np.asarray(data["W"], np.float32), np.asarray(data["b"], np.float32)
                stored = tuple(str(x) for x in data["labels"]) if "labels" in data else None
                version = int(data["version"]) if "version" in data else 0
                taps = tuple(str(x) for x in data["taps"]) if "taps" in data else (EMBEDDING,)
                dims = tuple(int(x) for x in data["dims"]) if "dims" in data else (int(W.shape[1]) if W.ndim == 2
                                                                                    else 0,)
                mean = np.asarray(data["mean"], np.float32) if "mean" in data else None
                std = np.asarray(data["std"], np.float32) if "std" in data else None
                kind = str(data["kind"]) if "kind" in data else "softmax"
        except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as exc:
            raise DamagedHead(path, type(exc).__name__) from None
        names = stored or labels
        if W.ndim != 2 or b.shape != (W.shape[0],) or names is None or len(names) != W.shape[0]:
            raise DamagedHead(path, f"W {W.shape}, b {b.shape} and {0 if names is None else len(names)} labels "
                                    "do not fit together")
        if len(taps) != len(dims) or sum(dims) != W.shape[1] or kind not in KINDS or any(
                s is not None and s.shape != (W.shape[1],) for s in (mean, std)) or (mean is None) != (std is None):
            raise DamagedHead(path, f"its taps {list(taps)} ({sum(dims)} features), standardisation and W "
                                    f"{W.shape} do not fit together")
        if not all(np.isfinite(a).all() for a in (W, b, *(s for s in (mean, std) if s is not None))) or (
                std is not None and (std <= 0).any()):
            raise DamagedHead(path, "it holds NaN or inf")
        return cls(W, b, tuple(names), version, taps, dims, mean, std, kind)

    def arrays(self) -> dict[str, np.ndarray]:
        """What its .npz holds (`np.savez(f, **head.arrays())`)."""
        out = {"W": self.W.astype(np.float32), "b": self.b.astype(np.float32), "labels": np.asarray(self.labels),
               "version": np.int64(self.version), "taps": np.asarray(self.taps), "dims": np.asarray(self.dims),
               "kind": np.asarray(self.kind)}
        if self.mean is not None:
            out["mean"], out["std"] = self.mean.astype(np.float32), self.std.astype(np.float32)
        return out

    @cached_property
    def _folded(self) -> tuple[np.ndarray, np.ndarray]:
        """The standardisation folded into W and b: one matmul per frame, whatever the head."""
        if self.mean is None:
            return np.ascontiguousarray(self.W.T), self.b
        scaled = self.W / self.std
        return np.ascontiguousarray(scaled.T).astype(np.float32), (self.b - scaled @ self.mean).astype(np.float32)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Logits of `features` (N, width): the head's own columns of the backbone's output."""
        W_t, b = self._folded
        out = features @ W_t
        out += b
        return out


def softmax_(logits: np.ndarray) -> np.ndarray:
    """`softmax`, in place in `logits` (a fresh array its caller owns): three passes, no new arrays."""
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
