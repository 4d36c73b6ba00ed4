"""Scoring int8 candidates against fp32: the run's float head over each artifact's outputs, on labelled sets
as the artifact takes them (frames, or a text run's token ids). Top-1 in percent (0-100, 2 decimals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.console import silenced
from edgetl.runtime import engines
from edgetl.runtime.features import EMBEDDING, Layout


@dataclass
class Trial:
    method: str
    float_layers: tuple[str, ...]
    path: Path
    top1: float
    drop: float
    agreement: float
    extra: dict = field(default_factory=dict)
    refinements: tuple[str, ...] = ()  # PTQ refinements applied before quantizing (edgetl.quantize.refine)

    @property
    def label(self) -> str:
        """The candidate as the record names it: "percentile", "minmax+bias_correction", "qat"."""
        return "+".join((self.method, *self.refinements))

    @property
    def test_drop(self) -> float | None:
        test = (self.extra.get("test") or [None])[0]
        return test["drop"] if test else None

    def summary(self) -> dict:
        return {"method": self.method, "refinements": list(self.refinements), "float_layers": list(self.float_layers),
                "int8_top1": self.top1, "drop": self.drop, "agreement": self.agreement,
                "test": (self.extra.get("test") or [None])[0]}


@dataclass(frozen=True)
class Labelled:
    name: str
    x: np.ndarray  # as the artifact takes it: uint8 frames, or normalised in its layout
    labels: np.ndarray


def top1_percent(pred: np.ndarray, labels: np.ndarray) -> float:
    return round(100.0 * float((pred == labels).mean()), 2)


class Scorer:
    """Scores backbone artifacts with the run's float head; fp32 predictions are the reference."""

    def __init__(self, fp32: Path, head: dict, sets: list[Labelled], layout: Layout):
        self.W, self.b = head["W"], head["b"]
        self.sets, self.layout = sets, layout
        self.embedding = layout.columns((EMBEDDING,))
        engine = load_engine(fp32)
        self.features = engine.run(sets[0].x)  # fp32 outputs on the guard set: what each tap is held to
        self.reference = [self.predict(engine, s) for s in sets]
        self.fp32_top1 = [top1_percent(p, s.labels) for p, s in zip(self.reference, sets, strict=True)]

    def predict(self, engine, labelled: Labelled, head: dict | None = None) -> np.ndarray:
        W, b = (head["W"], head["b"]) if head is not None else (self.W, self.b)
        return (engine.run(labelled.x)[:, self.embedding] @ W.T + b).argmax(1)

    def tap_errors(self, path: Path) -> dict[str, float]:
        """Per output segment, the int8 error relative to the segment's own variation across images:
        |int8 - fp32| / |fp32 - its mean| (Frobenius) on the guard set; a head standardises each
        feature, so this is the noise it sees against the signal."""
        with silenced():
            q = load_engine(path).run(self.sets[0].x)
        out = {}
        for name in self.layout.names:
            cols = self.layout.columns((name,))
            f = self.features[:, cols]
            spread = float(np.linalg.norm(f - f.mean(0)))
            out[name] = round(float(np.linalg.norm(q[:, cols] - f)) / max(spread, 1e-12), 4)
        return out

    def score(self, path: Path, head: dict | None = None) -> list[tuple[float, float, float]]:
        """(int8 top-1 %, drop in points, agreement with fp32) per labelled set, through the run's head or
        `head` (W, b: one trained with the artifact, as quantization-aware fine-tuning does)."""
        engine = load_engine(path)
        out = []
        for s, ref, fp32 in zip(self.sets, self.reference, self.fp32_top1, strict=True):
            with silenced():
                pred = self.predict(engine, s, head)
            top1 = top1_percent(pred, s.labels)
            out.append((top1, round(fp32 - top1, 2), round(float((pred == ref).mean()), 4)))
        return out

    def trial(self, method: str, float_layers: tuple[str, ...], path: Path, refinements: tuple[str, ...] = (),
              head: dict | None = None) -> Trial:
        """`path` scored: judged on the first set, the others (test) recorded beside it."""
        (top1, drop, agreement), *rest = self.score(path, head)
        return Trial(method, float_layers, path, top1, drop, agreement,
                     {"test": [dict(zip(("int8_top1", "drop", "agreement"), r, strict=True)) for r in rest]},
                     refinements)


def load_engine(path: Path):
    """An engine for `path`, without the interpreter's own log lines (XNNPACK)."""
    with silenced():
        return engines.load(path, threads=1)
