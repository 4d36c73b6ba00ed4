"""Activation ranges from a histogram: the entropy (KL) and percentile calibrators.

onnxruntime has these calibrators built in; PT2E (the TFLite path) has only min/max and an
L2 search, so the same two methods are written here as observers, following ORT's
definitions: both work on the histogram of |x| and clip symmetrically at a threshold T.
"""

from __future__ import annotations

import numpy as np
import torch
from torchao.quantization.pt2e.observer import HistogramObserver

PERCENTILE = 99.999  # the percentile calibrator's clip point, the same for both formats (ONNX and TFLite)


QUANT_BINS = 128  # ORT's default for the entropy search


def _abs_histogram(hist: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Fold a histogram over [lo, hi] into one over [0, max(|lo|, |hi|)] with as many bins."""
    edges = np.linspace(lo, hi, len(hist) + 1)
    centres = np.abs((edges[:-1] + edges[1:]) / 2)
    top = max(abs(lo), abs(hi))
    return np.histogram(centres, bins=len(hist), range=(0.0, top), weights=hist)


def percentile_threshold(hist: np.ndarray, edges: np.ndarray, percentile: float = PERCENTILE) -> float:
    cdf = np.cumsum(hist) / max(hist.sum(), 1e-12)
    i = int(np.searchsorted(cdf, percentile / 100.0))
    return float(edges[min(i + 1, len(edges) - 1)])


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, quant_bins: int = QUANT_BINS) -> float:
    """The clip threshold whose quantized distribution loses the least information (min KL divergence,
    the TensorRT/ORT calibrator): P is the clipped histogram with the outliers folded into its last
    bin, Q the same bins merged into `quant_bins` levels without them."""
    eps = 1e-10
    best, best_i = np.inf, len(hist)
    for i in range(quant_bins, len(hist) + 1, max(1, (len(hist) - quant_bins) // 128)):
        sliced = hist[:i].astype(np.float64)
        p = sliced.copy()
        p[-1] += hist[i:].sum()
        q = np.zeros(i)
        for idx in np.array_split(np.arange(i), quant_bins):  # merge, then spread back over non-empty bins
            nonzero = sliced[idx] > 0
            if nonzero.any():
                q[idx[nonzero]] = sliced[idx].sum() / nonzero.sum()
        if p.sum() == 0 or q.sum() == 0:
            continue
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], eps))))
        if kl < best:
            best, best_i = kl, i
    return float(edges[best_i])


class _ClippingObserver(HistogramObserver):
    """A histogram observer whose range is clipped at a threshold on |x|."""

    def threshold(self, hist: np.ndarray, edges: np.ndarray) -> float:
        raise NotImplementedError

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = float(self.min_val), float(self.max_val)
        if hi <= lo:
            return self.min_val, self.max_val
        hist, edges = _abs_histogram(self.histogram.detach().cpu().numpy().astype(np.float64), lo, hi)
        t = self.threshold(hist, edges)
        return torch.tensor(max(lo, -t)), torch.tensor(min(hi, t))


class PercentileObserver(_ClippingObserver):
    def threshold(self, hist, edges):
        return percentile_threshold(hist, edges)


class EntropyObserver(_ClippingObserver):
    def threshold(self, hist, edges):
        return entropy_threshold(hist, edges)
