"""PyTorch -> ONNX through torch.onnx's exporter (torch.export based), static input shape."""

from __future__ import annotations

from pathlib import Path

import torch

from edgetl.console import silenced
from edgetl.errors import converting

OPSET = 18  # >= 17 (LayerNorm, and what TensorRT 8.6+ parses); 18 is the torch.export exporter's own


def to_onnx(module: torch.nn.Module, sample: torch.Tensor, path: Path, *, output_name: str) -> None:
    """Write `module` as a single-file ONNX model taking `sample`'s shape (NCHW float32)."""
    module.eval()
    with silenced(), torch.no_grad(), converting("ONNX export (torch.onnx)", "this backbone does not export to ONNX "
                                                 "with this torch; try --format tflite, or another backbone"):
        program = torch.onnx.export(module, (sample,), dynamo=True, opset_version=OPSET, input_names=["image"],
                                    output_names=[output_name], external_data=False, verbose=False)
        program.save(str(path))
