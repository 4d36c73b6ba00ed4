"""The preprocessing spec: how an image becomes the model's input tensor, kept as data.

Written once at fine-tune time into the run (`preprocess.json`) and carried into every
artifact, so training, export checks, calibration and the device apply the same steps.
numpy only: this module is imported on the device.
"""

from __future__ import annotations

import math
from dataclasses import field, replace
from functools import cached_property

import numpy as np

from edgetl.runtime.features import Segment
from edgetl.runtime.records import Record, RecordError, record

RESIZE_MODES = ("stretch", "crop")
LAYOUTS = ("NCHW", "NHWC")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CHANNEL_ORDERS = ("RGB", "BGR")
INPUT_DTYPES = ("float32", "int8", "uint8")
INPUTS = ("uint8", "float")  # what the model takes: the frame's own pixels, or `normalize`'s output


@record
class PreprocessSpec(Record):
    """Input contract of a backbone, created once at fine-tune; each later stage adds what it owns.

    size: (height, width) of the model input.
    resize: "stretch" scales the whole image to size (tight crops such as sign detections);
            "crop" scales the shorter side to size and centre-crops the rest.
    interpolation: the resampling filter of that resize (decoder and device alike).
    mean/std: per-channel normalisation applied to pixels scaled to [0, 1], in RGB order.
    channel_order: the order the model takes its channels in (BGR: OpenCV/Caffe-trained models).
    layout: NCHW (PyTorch, ONNX) or NHWC (TFLite artifacts, which take images as decoded): set by export.
    input: what the model takes, set by export: "uint8", the frame itself (uint8 NHWC RGB at `size`,
            mean/std, channel order and layout done inside the graph, so the device does no arithmetic
            per pixel), or "float", the tensor `normalize` makes in `layout` (specs from before uint8
            bundles). `model_input` gives either from decoded pixels.
    dtype/input_scale/input_zero_point: the model input's type and quantization: set by quantize,
            checked against the engine's own input when a bundle is loaded.
    outputs: the segments of the backbone's output (the embedding, then its taps): set by export;
            empty when the whole output is the embedding (`edgetl.runtime.features`).
    """

    OPTIONAL_KEYS = frozenset({"outputs", "input"})  # specs written before taps / uint8 input existed

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
    outputs: tuple[Segment, ...] = ()
    input: str = "float"
    schema_version: int = field(default=1)

    def __post_init__(self) -> None:
        why = self.problem()
        if why:
            raise RecordError(why)

    def problem(self) -> str | None:
        """What makes this spec unusable (the shapes and names every stage relies on), or None."""
        for name, allowed in (("resize", RESIZE_MODES), ("layout", LAYOUTS), ("interpolation", INTERPOLATIONS),
                              ("channel_order", CHANNEL_ORDERS), ("dtype", INPUT_DTYPES), ("input", INPUTS)):
            if getattr(self, name) not in allowed:
                return f"{name} must be one of {allowed}, not {getattr(self, name)!r}"
        if not (_numbers(self.size, 2) and all(isinstance(v, int) and 8 <= v <= 4096 for v in self.size)):
            return f"size must be two whole numbers of pixels (8..4096), not {list(self.size)!r}"
        if not _numbers(self.mean, 3):
            return f"mean must be 3 finite numbers (one per channel), not {list(self.mean)!r}"
        if not (_numbers(self.std, 3) and all(v > 0 for v in self.std)):
            return f"std must be 3 finite numbers > 0, not {list(self.std)!r}"
        if (self.input_scale is None) != (self.input_zero_point is None) or (
                not self.pixels and (self.dtype == "float32") != (self.input_scale is None)):
            return (f"dtype {self.dtype}, input_scale {self.input_scale} and input_zero_point "
                    f"{self.input_zero_point} do not fit together (an integer input has both, a float one neither)")
        if self.pixels and (self.layout != "NHWC" or self.dtype != "uint8"):
            return f"a model taking uint8 frames takes them NHWC as uint8, not {self.layout} {self.dtype}"
        names = [o.name for o in self.outputs]
        if self.outputs and (names[0] != "embedding" or len(set(names)) != len(names)
                             or any(o.dim < 1 for o in self.outputs)):
            return f"outputs must start with the embedding and name each segment once, not {names!r}"
        return None

    def with_outputs(self, outputs: tuple[Segment, ...]) -> PreprocessSpec:
        """What export (the taps) and quantize (a dropped tap) add: the backbone output's segments."""
        return replace(self, outputs=tuple(outputs))

    def with_layout(self, layout: str) -> PreprocessSpec:
        """What export adds: the artifact's input layout."""
        return replace(self, layout=layout)

    def with_pixels(self) -> PreprocessSpec:
        """What export adds for a model taking the frame itself: uint8 NHWC, no normalisation outside it."""
        return replace(self, input="uint8", layout="NHWC", dtype="uint8", input_scale=None, input_zero_point=None)

    @property
    def pixels(self) -> bool:
        """The model takes uint8 frames (its graph normalises them)."""
        return self.input == "uint8"

    def model_input(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC frames at `size` as the model takes them: the frames themselves, or normalised."""
        return images if self.pixels else self.normalize(images)

    @property
    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset) per channel, in the model's channel order: the model's input is
        pixel * scale + offset of the pixels in that order (float32, what the graph of a uint8 model folds in)."""
        order = slice(None, None, -1 if self.channel_order == "BGR" else 1)  # mean/std are given in RGB
        std = np.asarray(self.std, np.float64)[order]
        return ((1.0 / (255.0 * std)).astype(np.float32),
                (-np.asarray(self.mean, np.float64)[order] / std).astype(np.float32))

    def with_input(self, dtype: str, scale: float | None, zero_point: int | None) -> PreprocessSpec:
        """What quantize adds: the model input's integer type and its scale/zero-point (float: neither)."""
        if self.pixels:  # the frame's own uint8, whatever quantization the engine gives its pixels
            return replace(self, input_scale=None if scale is None else float(scale),
                           input_zero_point=None if scale is None else int(zero_point))
        if dtype == "float32" or scale is None:
            return replace(self, dtype="float32", input_scale=None, input_zero_point=None)
        return replace(self, dtype=dtype, input_scale=float(scale), input_zero_point=int(zero_point))

    @cached_property
    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        """((p/255) - mean) / std as p * scale + offset, the constants laid out like one input
        image in `layout`: numpy's inner loop then runs the image's length, not 3."""
        scale, offset = self.affine
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
        if self.channel_order == "BGR":  # decoded images are RGB
            images = images[..., ::-1]
        src = images.transpose(0, 3, 1, 2) if self.layout == "NCHW" else images
        if src.shape[1:] != scale.shape:  # not at the spec's size: one constant per channel
            corner = np.s_[:, :1, :1] if self.layout == "NCHW" else np.s_[:1, :1, :]
            scale, offset = scale[corner], offset[corner]
        x = np.empty(src.shape, np.float32)  # C-contiguous in the model's layout
        np.multiply(src, scale, out=x)
        x += offset
        return x


def _numbers(values, n: int) -> bool:
    return (isinstance(values, tuple) and len(values) == n
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values))
