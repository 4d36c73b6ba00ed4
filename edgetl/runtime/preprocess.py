"""The preprocessing spec: how an image becomes the model's input tensor, kept as data.

Written once at fine-tune time into the run (`preprocess.json`) and carried into every
artifact, so training, export checks, calibration and the device apply the same steps.
numpy only: this module is imported on the device.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np

RESIZE_MODES = ("stretch", "crop")
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class PreprocessSpec:
    """Input contract of a backbone.

    size: (height, width) of the model input.
    resize: "stretch" scales the whole image to size (tight crops such as sign detections);
            "crop" scales the shorter side to size and centre-crops the rest.
    mean/std: per-channel normalisation applied to pixels scaled to [0, 1].
    layout: NCHW (PyTorch, ONNX) or NHWC (TFLite artifacts, which take images as decoded).
    input_scale/input_zero_point: set once the model input is quantized (later stages).
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "stretch"
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"
    input_scale: float | None = None
    input_zero_point: int | None = None
    schema_version: int = field(default=1)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, not {self.resize!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {self.layout!r}")

    @cached_property
    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """((p/255) - mean) / std as p * scale + offset, the constants laid out like one input
        image in `layout`: numpy's inner loop then runs the image's length, not 3."""
        std = np.asarray(self.std, np.float64)
        scale = (1.0 / (255.0 * std)).astype(np.float32)
        offset = (-np.asarray(self.mean, np.float64) / std).astype(np.float32)
        if self.layout == "NCHW":
            shape, scale, offset = (3, *self.size), scale[:, None, None], offset[:, None, None]
        else:
            shape = (*self.size, 3)
        return np.broadcast_to(scale, shape).copy(), np.broadcast_to(offset, shape).copy()

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC (already resized to `size`) -> float32 in `layout`, mean/std applied.
        This runs for every frame on the device, so it is two passes over the frame: the
        multiply converts, lays out and scales at once, then the offset is added in place."""
        scale, offset = self._affine
        src = images.transpose(0, 3, 1, 2) if self.layout == "NCHW" else images
        if src.shape[1:] != scale.shape:  # not at the spec's size: one constant per channel
            corner = np.s_[:, :1, :1] if self.layout == "NCHW" else np.s_[:1, :1, :]
            scale, offset = scale[corner], offset[corner]
        x = np.empty(src.shape, np.float32)  # C-contiguous in the model's layout
        np.multiply(src, scale, out=x)
        x += offset
        return x

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        raw = json.loads(text)
        if raw.get("schema_version") != 1:
            raise ValueError(f"unknown preprocessing schema_version {raw.get('schema_version')!r}")
        raw["size"] = tuple(raw["size"])
        raw["mean"] = tuple(raw["mean"])
        raw["std"] = tuple(raw["std"])
        return cls(**raw)
