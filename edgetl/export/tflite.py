"""PyTorch -> TFLite through litert-torch: fp32, or full-int8 from a PT2E-quantized graph.

The artifact takes NHWC input (images as they are decoded), so the device does no transpose
and the graph carries none at its input.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgetl.console import silenced
from edgetl.errors import converting


def channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """`module` taking NHWC instead of NCHW (litert-torch's own IO wrapper)."""
    with silenced():
        import litert_torch

    return litert_torch.to_channel_last_io(module, args=[0])


def nhwc(sample: torch.Tensor) -> torch.Tensor:
    return sample.permute(0, 2, 3, 1).contiguous()


def to_tflite(module: torch.nn.Module, sample: torch.Tensor, path: Path, *, quant_config=None) -> None:
    """Write `module` (in eval mode; NHWC-wrapped, or a PT2E-converted graph of it) as .tflite for `sample`."""
    with silenced(), torch.no_grad():
        try:
            import litert_torch  # its import wakes TensorFlow's and absl's loggers: inside the silence
        except ImportError:
            from edgetl.errors import ConfigError

            raise ConfigError("TFLite export needs litert-torch", "pip install 'edgetl[host]'") from None
        what = f"TFLite {'int8 ' if quant_config is not None else ''}conversion (litert-torch)"
        with converting(what, "litert-torch cannot convert this backbone: use --format onnx for it, or another "
                              "backbone"):
            model = litert_torch.convert(module, (sample,), quant_config=quant_config, strict_export=True)
            model.export(str(path))
