"""A full-int8 TFLite model given the camera's frame as its input (`to_pixels`): the same numbers as
the model fed the normalised image, in ops the Edge TPU maps."""

import numpy as np
import pytest
import torch

from edgetl import targets
from edgetl.backends import edgetpu, tflite_graph
from edgetl.backends.tflite_io import coral_quantization, to_pixels, to_uint8
from edgetl.runtime import engines


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return torch.flatten(self.pool(torch.relu(self.conv(x))), 1)


FRAMES = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)


def _normalised(scale, offset):
    return (FRAMES.astype(np.float32) * scale + offset).astype(np.float32)


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    """A full-int8 model of TinyNet taking the normalised NHWC image, ImageNet's per-channel mean/std."""
    from edgetl.quantize.tflite import quantize

    scale = (1 / (255 * np.array([0.229, 0.224, 0.225]))).astype(np.float32)
    offset = (-np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225])).astype(np.float32)
    path = tmp_path_factory.mktemp("tiny") / "tiny.tflite"
    quantize(TinyNet().eval(), path, _normalised(scale, offset)[:32], "minmax")
    return path, scale, offset


def test_per_channel_mean_std_become_a_depthwise_conv_that_computes_the_same(int8_model, tmp_path):
    path, scale, offset = int8_model
    to_pixels(path, tmp_path / "frames.tflite", scale, offset)
    ops = [op.op for op in tflite_graph.read(tmp_path / "frames.tflite").ops]
    assert ops[:2] == ["QUANTIZE", "DEPTHWISE_CONV_2D"]  # uint8 pixels -> int8, then each channel's scale + offset
    with engines.load(tmp_path / "frames.tflite") as frames, engines.load(path) as normalised:
        assert frames.input.dtype == "uint8" and (frames.input.scale, frames.input.zero_point) == (1.0, 0)
        a, b = frames.run(FRAMES), normalised.run(_normalised(scale, offset))
        # the affine in integers rounds a tie now and then the other way than float does: one output step at most
        steps = np.abs(a - b) / frames.output.scale
        assert steps.max() <= 1.001 and (steps > 0.5).mean() <= 0.05


def test_one_scale_and_an_integer_zero_point_are_the_input_quantization_itself(tmp_path):
    """(p - 128) / 128 on every channel: Coral's models, one requantize and nothing else."""
    from edgetl.quantize.tflite import quantize

    scale, offset = np.full(3, 1 / 128, np.float32), np.full(3, -1.0, np.float32)
    assert coral_quantization(scale, offset) == (1 / 128, 128)
    assert coral_quantization(np.full(3, 1 / 127.5, np.float32), np.full(3, -1.0, np.float32)) is None  # zp 127.5
    quantize(TinyNet().eval(), tmp_path / "tiny.tflite", _normalised(scale, offset)[:32], "minmax")
    to_pixels(tmp_path / "tiny.tflite", tmp_path / "frames.tflite", scale, offset)
    assert [op.op for op in tflite_graph.read(tmp_path / "frames.tflite").ops][:2] == ["QUANTIZE", "CONV_2D"]
    with engines.load(tmp_path / "frames.tflite") as frames, engines.load(tmp_path / "tiny.tflite") as normalised:
        assert (frames.input.dtype, frames.input.scale, frames.input.zero_point) == ("uint8", 1 / 128, 128)
        np.testing.assert_array_equal(frames.run(FRAMES), normalised.run(_normalised(scale, offset)))


def test_a_float_input_gets_the_affine_in_float(tmp_path):
    """Where the first layer was kept float, the input is float: pixels are dequantized, scaled and offset."""
    from edgetl.export.tflite import channels_last, to_tflite

    scale, offset = np.array([0.01, 0.02, 0.03], np.float32), np.array([-1.0, -2.0, 0.5], np.float32)
    to_tflite(channels_last(TinyNet().eval()), torch.zeros(1, 16, 16, 3), tmp_path / "fp32.tflite")
    to_pixels(tmp_path / "fp32.tflite", tmp_path / "frames.tflite", scale, offset)
    with engines.load(tmp_path / "frames.tflite") as frames, engines.load(tmp_path / "fp32.tflite") as normalised:
        np.testing.assert_allclose(frames.run(FRAMES), normalised.run(_normalised(scale, offset)), atol=1e-5)


def test_the_frame_input_maps_on_the_edge_tpu_with_uint8_io(int8_model, tmp_path):
    path, scale, offset = int8_model
    to_pixels(path, tmp_path / "frames.tflite", scale, offset)
    to_uint8(tmp_path / "frames.tflite", tmp_path / "uint8io.tflite")  # the output too, as Coral targets ask
    report = edgetpu.static_report(tmp_path / "uint8io.tflite", targets.load("coral-usb"))
    assert report.fully_mapped, report.summary()
    graph = tflite_graph.read(tmp_path / "uint8io.tflite")
    assert [t.dtype for t in graph.inputs] == ["uint8"] and [t.dtype for t in graph.outputs] == ["uint8"]


def test_a_model_that_is_not_an_nhwc_image_is_refused(tmp_path):
    from edgetl.export.tflite import to_tflite

    to_tflite(TinyNet().eval(), torch.zeros(1, 3, 16, 16), tmp_path / "nchw.tflite")  # 3 channels first
    with pytest.raises(ValueError, match="not an int8 or float NHWC image with 3 channels"):
        to_pixels(tmp_path / "nchw.tflite", tmp_path / "out.tflite", np.ones(3), np.zeros(3))
