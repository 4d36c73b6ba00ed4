"""Models edgetl did not train, for the compile checks: small int8 .tflite files converted here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgetl.data.imagefolder import load_images, scan


class SplitNet(nn.Module):
    """conv -> conv -> LeakyReLU -> conv -> global pool: LeakyReLU has an int8 TFLite kernel but is no Edge TPU op."""

    def __init__(self, leaky: bool = True):
        super().__init__()
        self.leaky = leaky
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 16, 3)

    def forward(self, x):
        x = torch.relu(self.a(x))
        x = self.b(x)
        x = nn.functional.leaky_relu(x, 0.1) if self.leaky else torch.relu(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.c(x)), 1), 1)


def _int8_tflite(module: nn.Module, images: Path, out: Path) -> Path:
    from edgetl.quantize import tflite

    loaded = load_images(scan(images).samples, (16, 16), "stretch")
    x = loaded.images[:32].astype(np.float32) / 255.0  # real images, NHWC, as calibration always is
    torch.manual_seed(0)
    tflite.quantize(module.eval(), out, x, "minmax")
    return out


@pytest.fixture(scope="session")
def zoo(signs, tmp_path_factory) -> dict[str, Path]:
    """int8 .tflite models from "elsewhere": one with an unsupported op in the middle, one without."""
    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    return {"split": _int8_tflite(SplitNet(leaky=True), signs["train"], root / "split.tflite"),
            "clean": _int8_tflite(SplitNet(leaky=False), signs["train"], root / "clean.tflite")}
