"""edgetl: fine-tune, quantize, compile, ship and check vision backbones for edge devices."""

__version__ = "0.1.0"
