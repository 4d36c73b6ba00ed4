"""A backbone that takes the camera's frame itself: uint8 NHWC RGB at its input size.

Mean/std, the channel order and the layout change become the first ops of the graph, so the
device hands the engine its decoded frame and does no arithmetic per pixel (what Coral's and
MediaPipe's models do, and what PaddleOCR measured as most of its preprocessing time). The
arithmetic is the spec's own (`PreprocessSpec.affine`), in float, so the uint8 model computes
what the float-input model computes on `normalize`'s output.
"""

from __future__ import annotations

import torch

from edgetl.runtime.preprocess import PreprocessSpec


class Pixels(torch.nn.Module):
    """`module` (normalised NCHW float in) taking uint8 NHWC frames. `channels_first` (ONNX): the uint8
    frame is laid out NCHW first, then cast, scaled and offset per channel plane, which onnxruntime runs
    4x faster than the same ops over NHWC's 3-wide rows (measured: 120 us against 1.16 ms over the
    float model at 224 px). Otherwise (TFLite): cast, scale and offset in NHWC, then NCHW, which the
    TFLite converter folds into its NHWC convs."""

    def __init__(self, module: torch.nn.Module, spec: PreprocessSpec, *, channels_first: bool = False):
        super().__init__()
        self.module, self.channels_first = module, channels_first
        scale, offset = spec.affine
        shape = (1, 3, 1, 1) if channels_first else (3,)
        self.flip = spec.channel_order == "BGR"  # frames are decoded RGB
        self.register_buffer("scale", torch.from_numpy(scale.reshape(shape).copy()), persistent=False)
        self.register_buffer("offset", torch.from_numpy(offset.reshape(shape).copy()), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.flip(-1) if self.flip else frames
        if self.channels_first:
            return self.module(x.permute(0, 3, 1, 2).to(torch.float32) * self.scale + self.offset)
        x = x.to(torch.float32) * self.scale + self.offset
        return self.module(x.permute(0, 3, 1, 2))


def frames_sample(spec: PreprocessSpec) -> torch.Tensor:
    """One uint8 NHWC frame at the spec's size: what an export of a `Pixels` module traces."""
    return torch.zeros((1, *spec.size, 3), dtype=torch.uint8)
