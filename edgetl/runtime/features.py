"""What a bundle's backbone outputs: the final embedding, then the pooled features of its taps.

The backbone artifact has one output tensor, the segments side by side: `embedding` first
(what the server's head reads), then one globally pooled stage per tap (Head2Toe: a head over
features from every stage sees what the final embedding dropped). One tensor keeps every
engine, the int8 output and the parity check as they were; the layout, recorded in the
preprocessing spec (`PreprocessSpec.outputs`) and so in the manifest, says which columns are
which. A tap quantize found too damaged in int8 is kept in the tensor but marked `dropped`:
no head reads it. numpy and the standard library only: this module is imported on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from edgetl.runtime.records import Record, record

EMBEDDING = "embedding"


@record
class Segment(Record):
    """One block of columns of the backbone's output."""

    OPTIONAL_KEYS = frozenset({"gain", "dropped", "grid"})

    name: str  # "embedding", or the stage whose output map was pooled
    dim: int  # channels x grid x grid
    gain: float = 1.0  # the constant the pooled tap was multiplied by in the graph (its range ~ the embedding's)
    dropped: bool = False  # too damaged by int8 (quantize.json says by how much): no head reads it
    grid: int = 1  # the map average-pooled to grid x grid cells (2: where in the image a pattern is, not only if)


@dataclass(frozen=True)
class Layout:
    """The segments of one backbone output, in column order."""

    segments: tuple[Segment, ...]

    @classmethod
    def of(cls, outputs: tuple[Segment, ...], width: int) -> Layout:
        """The layout of an output `width` wide: `outputs` as recorded, or the embedding alone when none is."""
        return cls(tuple(outputs) if outputs else (Segment(EMBEDDING, int(width)),))

    @property
    def width(self) -> int:
        return sum(s.dim for s in self.segments)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.segments)

    @property
    def taps(self) -> tuple[str, ...]:
        """The tapped stages (every segment but the embedding)."""
        return tuple(s.name for s in self.segments if s.name != EMBEDDING)

    @property
    def usable(self) -> tuple[str, ...]:
        """What a new head may read: every segment quantize did not drop."""
        return tuple(s.name for s in self.segments if not s.dropped)

    @cached_property
    def _offsets(self) -> dict[str, tuple[int, int]]:
        out, start = {}, 0
        for s in self.segments:
            out[s.name] = (start, start + s.dim)
            start += s.dim
        return out

    def dims(self, names: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(self._offsets[n][1] - self._offsets[n][0] for n in names)

    def problem(self, names: tuple[str, ...], dims: tuple[int, ...]) -> str | None:
        """Why a head reading segments `names` of `dims` cannot run on this output, or None."""
        if any(n not in self._offsets for n in names) or self.dims(tuple(names)) != tuple(dims):
            return (f"it was trained for taps ({', '.join(names)}; {sum(dims)} features) and this bundle's backbone "
                    f"gives ({', '.join(self.names)}; {self.width} features)")
        dropped = [s.name for s in self.segments if s.dropped and s.name in names]
        if dropped:
            return f"it reads tap(s) {', '.join(dropped)}, which this bundle's int8 backbone drops"
        return None

    def columns(self, names: tuple[str, ...]) -> slice | np.ndarray:
        """The columns of `names`: a slice when they are contiguous (no copy per frame), else an index."""
        spans = [self._offsets[n] for n in names]
        if all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False)):
            return slice(spans[0][0], spans[-1][1])
        return np.concatenate([np.arange(a, b) for a, b in spans])
