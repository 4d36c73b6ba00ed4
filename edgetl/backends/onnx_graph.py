"""Reading an ONNX file's graph, once, for every reader: the backends' op-by-op checks, the
int8 op counts and the check that a bare .onnx a user brings is a model at all (the ONNX twin of
`tflite_graph`)."""

from __future__ import annotations

from pathlib import Path

from edgetl.errors import ConfigError


def load_onnx(model_path: Path):
    """An ONNX file's graph (`onnx.ModelProto`, weights kept outside it); a clear error when it is not one."""
    import onnx

    try:
        return onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends on a damaged file
        raise ConfigError(f"{model_path} is not a valid ONNX model (truncated, damaged or another kind of "
                          f"file: {type(exc).__name__})",
                          "pass a .onnx file written by an ONNX exporter") from None


def nodes_and_opset(model_path: Path) -> tuple[list, int]:
    """(nodes in execution order, default-domain opset) of an ONNX file: what a backend checks op by op."""
    model = load_onnx(model_path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return list(model.graph.node), opset
