"""The input normalisation a .tflite file's own metadata states (TFLite Support's `TFLITE_METADATA`).

Models from TF Hub / Kaggle and Model Maker carry a ModelMetadata flatbuffer (metadata_schema.fbs,
file identifier "M001") in a buffer the model's `metadata` list names: per input tensor, its
content (ImageProperties: the colour space) and process units (NormalizationOptions: per-channel
mean and std applied to the pixel values, `(x - mean) / std`). Only those few fields are read
here, with the `flatbuffers` runtime ai-edge-litert already needs: the one package that ships the
generated schema, tflite-support (last released 2023), pins protobuf<4 (which onnx cannot share)
and pulls 60 MB and an audio library, for eight table slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NAME = "TFLITE_METADATA"
IDENTIFIER = b"M001"
RGB, GRAYSCALE = 1, 2  # ColorSpaceType
IMAGE_PROPERTIES = 2  # ContentProperties union: ImageProperties
NORMALIZATION = 1  # ProcessUnitOptions union: NormalizationOptions

# vtable slots (4 + 2 * field index) of the fields read, as metadata_schema.fbs declares them
MODEL_SUBGRAPHS = 10  # ModelMetadata.subgraph_metadata (field 3)
SUBGRAPH_INPUTS = 8  # SubGraphMetadata.input_tensor_metadata (field 2)
TENSOR_CONTENT, TENSOR_PROCESS_UNITS = 10, 12  # TensorMetadata.content (3), .process_units (4)
CONTENT_TYPE, CONTENT_VALUE = 4, 6  # Content.content_properties (union: type, value)
IMAGE_COLOR_SPACE = 4  # ImageProperties.color_space
UNIT_TYPE, UNIT_VALUE = 4, 6  # ProcessUnit.options (union: type, value)
NORM_MEAN, NORM_STD = 4, 6  # NormalizationOptions.mean, .std


@dataclass(frozen=True)
class InputMetadata:
    """What the metadata says of the model's first input: mean/std in pixel units (0..255), its colour space."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    color_space: str | None = None  # "RGB" | "GRAYSCALE" | None (not stated)


def _child(fb, t, slot: int):
    """The table at `slot` of `t`, or None."""
    o = t.Offset(slot)
    return fb.table.Table(t.Bytes, t.Indirect(t.Pos + o)) if o else None


def _vector(fb, t, slot: int) -> list:
    """The tables of the vector at `slot` of `t`."""
    o = t.Offset(slot)
    if not o:
        return []
    start = t.Vector(o)
    return [fb.table.Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(t.VectorLen(o))]


def _floats(fb, t, slot: int) -> tuple[float, ...] | None:
    o = t.Offset(slot)
    if not o:
        return None
    start = t.Vector(o)
    return tuple(float(t.Get(fb.number_types.Float32Flags, start + 4 * i)) for i in range(t.VectorLen(o)))


def _union(fb, t, type_slot: int, value_slot: int):
    o = t.Offset(type_slot)
    kind = t.Get(fb.number_types.Uint8Flags, t.Pos + o) if o else 0
    o = t.Offset(value_slot)
    if not o:
        return kind, None
    value = fb.table.Table(t.Bytes, 0)
    t.Union(value, o)  # points `value` at the union's table
    return kind, value


def parse(buf: bytes) -> InputMetadata:
    """The first input's normalisation and colour space from a ModelMetadata flatbuffer (empty when absent)."""
    import flatbuffers as fb
    import flatbuffers.number_types  # noqa: F401 (the submodules `fb.` reaches)
    import flatbuffers.table  # noqa: F401

    if len(buf) < 8 or buf[4:8] != IDENTIFIER:
        return InputMetadata()
    data = bytearray(buf)
    root = fb.table.Table(data, fb.encode.Get(fb.packer.uoffset, data, 0))
    subgraphs = _vector(fb, root, MODEL_SUBGRAPHS)
    inputs = _vector(fb, subgraphs[0], SUBGRAPH_INPUTS) if subgraphs else []
    if not inputs:
        return InputMetadata()
    tensor = inputs[0]
    color = None
    content = _child(fb, tensor, TENSOR_CONTENT)
    if content is not None:
        kind, image = _union(fb, content, CONTENT_TYPE, CONTENT_VALUE)
        if kind == IMAGE_PROPERTIES and image is not None:
            o = image.Offset(IMAGE_COLOR_SPACE)
            space = image.Get(fb.number_types.Int8Flags, image.Pos + o) if o else 0
            color = {RGB: "RGB", GRAYSCALE: "GRAYSCALE"}.get(space)
    for unit in _vector(fb, tensor, TENSOR_PROCESS_UNITS):
        kind, options = _union(fb, unit, UNIT_TYPE, UNIT_VALUE)
        if kind == NORMALIZATION and options is not None:
            return InputMetadata(_floats(fb, options, NORM_MEAN), _floats(fb, options, NORM_STD), color)
    return InputMetadata(color_space=color)


def read(path: Path) -> InputMetadata:
    """What `path`'s TFLITE_METADATA says of its input; empty when the model has none (or it is unreadable:
    metadata is advice, and the caller then asks for --preprocess)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else str(entry.name)
        if name == NAME and 0 <= entry.buffer < len(model.buffers):
            data = model.buffers[entry.buffer].data
            if data is None:
                continue
            try:
                return parse(bytes(bytearray(data)))
            except Exception:  # a damaged metadata buffer is no metadata
                return InputMetadata()
    return InputMetadata()
