"""A model file cut at its embedding: one named tensor (or its only output) made the only output,
squeezed to (N, D), and the ops, tensors and weights that no longer feed it dropped.

What `edgetl bundle from-model` does to a model edgetl did not train: a classifier is cut before
its last layer (`--output NAME`), a pooled (N, D, 1, 1) map becomes (N, D). TFLite is edited with the
flatbuffer object API that ships with ai-edge-litert (as `tflite_io` does), ONNX with onnx's own
protobufs. Anything else (a feature map, several outputs, an unknown name) is a one-line refusal
that says what to pass instead.
"""

from __future__ import annotations

import copy
import difflib
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgetl.errors import ConfigError

SHOWN = 5  # names a refusal lists


@dataclass(frozen=True)
class Cut:
    """The model written: its embedding output and what was done to reach it."""

    model: Path
    output: str  # the embedding tensor's name in the model written
    source: str  # the tensor of the original model it is (the named one, or its only output)
    shape: tuple[int, ...]  # of the original tensor
    squeezed: bool  # a (N, 1, 1, D)-like tensor given a (N, D) reshape


def embedding_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(N, D) of a tensor that is an embedding: rank 2, or one whose only dimension past the batch
    that is not 1 is D (a pooled map, (N, 1, 1, D) or (N, D, 1, 1)); None for anything else."""
    if len(shape) < 2:
        return None
    rest = [d for d in shape[1:] if d != 1]
    if len(shape) == 2:
        return (shape[0], shape[1]) if shape[1] > 1 or shape[1] < 0 else None
    if len(rest) == 1 and rest[0] > 1:
        return shape[0], rest[0]
    return None


def _unknown(name: str, names: list[str], what: str) -> ConfigError:
    close = difflib.get_close_matches(name, names, n=SHOWN, cutoff=0.4)
    shown = close or names[-SHOWN:]
    return ConfigError(f"--output {name!r}: no tensor of that name in {what}",
                       f"{'close names' if close else 'its last tensors'}: {', '.join(shown)}")


def _not_embedding(name: str, shape, candidates: list[str], what: str) -> ConfigError:
    hint = "pass --output NAME, a pooled (N, D) tensor"
    if candidates:
        hint += f", e.g. {', '.join(candidates[-SHOWN:])}"
    return ConfigError(f"{what}'s output {name!r} has shape {list(shape)}: not an embedding (N, D)", hint)


def _several(names: list[str], what: str) -> ConfigError:
    return ConfigError(f"{what} has {len(names)} outputs ({', '.join(names[:SHOWN])}); a feature extractor has one",
                       "pass --output NAME: the embedding tensor")


# --- TFLite -------------------------------------------------------------------------------------

def _name(t) -> str:
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name)


def cut_tflite(src: Path, dst: Path, output: str | None = None) -> Cut:
    """`src` with `output` (default: its only output) as its only output, squeezed to (N, D), to `dst`."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(src))
    graph = model.subgraphs[0]
    what = src.name
    names = [_name(t) for t in graph.tensors]

    def constant(i: int) -> bool:
        b = graph.tensors[i].buffer
        return 0 < b < len(model.buffers) and model.buffers[b].data is not None and len(model.buffers[b].data) > 0

    computed = sorted({i for op in graph.operators for i in (op.outputs if op.outputs is not None else [])
                       if i >= 0}, key=lambda i: i)
    if output is None:
        outputs = [int(i) for i in graph.outputs]
        if len(outputs) != 1:
            raise _several([names[i] for i in outputs], what)
        index = outputs[0]
    else:
        if output not in names:
            raise _unknown(output, [names[i] for i in computed], what)
        index = names.index(output)
        if constant(index) or index in list(graph.inputs) or index not in computed:
            raise ConfigError(f"--output {output!r} is a constant or an input of {what}, not a computed tensor",
                              "name a tensor an op of the model computes")
    shape = tuple(int(d) for d in graph.tensors[index].shape)
    nd = embedding_shape(shape)
    if nd is None:
        rank2 = [names[i] for i in computed if embedding_shape(tuple(int(d) for d in graph.tensors[i].shape))]
        raise _not_embedding(names[index], shape, rank2, what)

    if output is None and len(shape) == 2:  # already an embedding: the file as given, byte for byte
        shutil.copyfile(src, dst)
        return Cut(dst, names[index], names[index], shape, False)
    # the ops that still feed the embedding, in their order
    needed, kept = {index}, []
    for op in reversed(graph.operators):
        outs = [i for i in (op.outputs if op.outputs is not None else []) if i >= 0]
        if needed & set(outs):
            kept.append(op)
            needed |= {i for i in (op.inputs if op.inputs is not None else []) if i >= 0}
            needed |= {i for i in (op.intermediates if op.intermediates is not None else []) if i >= 0}
    graph.operators = kept[::-1]
    squeezed = len(shape) != 2
    if squeezed:
        out = _reshape(model, graph, index, nd, fb)
    else:
        out = index
    graph.outputs = [out]
    if len(model.subgraphs) == 1:  # (more subgraphs: control flow may name any tensor; keep them all)
        out = _prune(model, graph)
    for signature in model.signatureDefs or []:
        mapping = fb.TensorMapT()
        mapping.name, mapping.tensorIndex = "embedding", out
        signature.outputs = [mapping]
    flatbuffer_utils.write_model(model, str(dst))
    return Cut(dst, _name(graph.tensors[out]), names[index], shape, squeezed)


def _reshape(model, graph, index: int, nd: tuple[int, int], fb) -> int:
    """A RESHAPE of tensor `index` to (N, D) after the last op; returns the new output tensor."""
    import numpy as np

    from edgetl.backends.tflite_io import _opcode

    source = graph.tensors[index]
    batch, dim = nd
    signature = list(source.shapeSignature) if source.shapeSignature is not None else list(source.shape)
    dynamic = bool(signature) and int(signature[0]) < 0
    shape_buffer = fb.BufferT()
    shape_buffer.data = np.asarray([-1 if dynamic else batch, dim], np.int32).view(np.uint8).tolist()
    model.buffers.append(shape_buffer)
    shape_tensor = fb.TensorT()
    shape_tensor.name, shape_tensor.type, shape_tensor.shape = "embedding_shape", fb.TensorType.INT32, [2]
    shape_tensor.buffer = len(model.buffers) - 1
    graph.tensors.append(shape_tensor)
    flat = copy.deepcopy(source)
    flat.name, flat.shape = "embedding", [batch, dim]
    flat.shapeSignature = [-1, dim] if dynamic else None
    flat.buffer = 0 if model.buffers and not model.buffers[0].data else _empty_buffer(model, fb)
    graph.tensors.append(flat)
    options = fb.ReshapeOptionsT()
    options.newShape = [-1 if dynamic else batch, dim]
    op = fb.OperatorT()
    op.opcodeIndex = _opcode(model, fb.BuiltinOperator.RESHAPE, fb, version=1)
    op.inputs, op.outputs = [index, len(graph.tensors) - 2], [len(graph.tensors) - 1]
    op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.ReshapeOptions, options
    graph.operators.append(op)
    return len(graph.tensors) - 1


def _empty_buffer(model, fb) -> int:
    model.buffers.append(fb.BufferT())
    return len(model.buffers) - 1


def _prune(model, graph) -> int:
    """Drop the tensors no op, input or output names any more, and the buffers only they held (the
    weights of the layers cut off); returns the output's new index."""
    used = set(int(i) for i in graph.inputs) | set(int(i) for i in graph.outputs)
    for op in graph.operators:
        for field in (op.inputs, op.outputs, op.intermediates):
            used |= {int(i) for i in (field if field is not None else []) if i >= 0}
    order = sorted(used)
    remap = {old: new for new, old in enumerate(order)}
    tensors = [graph.tensors[i] for i in order]
    buffers_used = {0} | {t.buffer for t in tensors} | {m.buffer for m in (model.metadata or [])}
    border = sorted(b for b in buffers_used if 0 <= b < len(model.buffers))
    bremap = {old: new for new, old in enumerate(border)}
    model.buffers = [model.buffers[b] for b in border]
    for t in tensors:
        t.buffer = bremap.get(t.buffer, 0)
    for m in model.metadata or []:
        m.buffer = bremap.get(m.buffer, m.buffer)
    graph.tensors = tensors
    graph.inputs = [remap[int(i)] for i in graph.inputs]
    graph.outputs = [remap[int(i)] for i in graph.outputs]
    for op in graph.operators:
        op.inputs = [remap[int(i)] if i >= 0 else -1 for i in (op.inputs if op.inputs is not None else [])]
        op.outputs = [remap[int(i)] for i in (op.outputs if op.outputs is not None else [])]
        if op.intermediates is not None:
            op.intermediates = [remap[int(i)] for i in op.intermediates]
    for signature in model.signatureDefs or []:
        for io in signature.inputs or []:
            io.tensorIndex = remap.get(io.tensorIndex, io.tensorIndex)
    return graph.outputs[0]


# --- ONNX ---------------------------------------------------------------------------------------

def cut_onnx(src: Path, dst: Path, output: str | None = None, *, size: tuple[int, int] | None = None) -> Cut:
    """`src` with `output` (default: its only output) as its only output, squeezed to (N, D), to `dst`;
    `size` fixes an input whose height and width are dynamic. The output's shape is what onnxruntime
    computes for one frame, so a graph with no shape annotations is judged by what it does."""
    import onnx
    from onnx import helper

    from edgetl.backends.onnx_graph import load_onnx

    load_onnx(src)  # one line for a file that is no ONNX model
    model = onnx.load(str(src))
    graph = model.graph
    what = src.name
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    computed = [o for node in graph.node for o in node.output if o]
    if output is None:
        if len(graph.output) != 1:
            raise _several([o.name for o in graph.output], what)
        name = graph.output[0].name
    else:
        if output not in computed:
            raise _unknown(output, computed, what)
        name = output
    fixed = False
    if size is not None and len(inputs) == 1:
        dims = inputs[0].type.tensor_type.shape.dim
        spatial = (2, 3) if len(dims) == 4 and dims[1].HasField("dim_value") and dims[1].dim_value == 3 else (1, 2)
        for axis, value in zip(spatial, size, strict=True):
            if len(dims) == 4 and not dims[axis].HasField("dim_value"):
                dims[axis].Clear()
                dims[axis].dim_value = int(value)
                fixed = True
    # the nodes that still feed the embedding, in their order
    needed, kept = {name}, []
    for node in reversed(graph.node):
        if needed & set(node.output):
            kept.append(node)
            needed |= {i for i in node.input if i}
            for attribute in node.attribute:  # a subgraph (If/Loop) may read outer names
                for sub in [attribute.g, *attribute.graphs]:
                    needed |= {i for n in sub.node for i in n.input if i}
    kept.reverse()
    typed = {v.name: v for v in [*graph.value_info, *graph.output]}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        typed.update({v.name: v for v in inferred.graph.value_info})
    except Exception:  # shape inference is advice; onnxruntime's run below decides
        pass
    elem = typed[name].type.tensor_type.elem_type if name in typed else onnx.TensorProto.FLOAT
    del graph.node[:]
    graph.node.extend(kept)
    keep_init = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)
    keep_inputs = [i for i in graph.input if i.name in needed or i.name not in initializers]
    del graph.input[:]
    graph.input.extend(keep_inputs)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(name, elem, None))
    onnx.save(model, str(dst))
    shape = _run_shape(dst, what)
    nd = embedding_shape(shape)
    if nd is None:
        candidates = [v for v in computed if v in typed and embedding_shape(
            tuple(d.dim_value if d.HasField("dim_value") else -1 for d in typed[v].type.tensor_type.shape.dim))]
        raise _not_embedding(name, shape, candidates, what)
    squeezed = len(shape) != 2
    if output is None and not squeezed and not fixed:  # already an embedding: the file as given, byte for byte
        shutil.copyfile(src, dst)
        return Cut(dst, name, name, shape, False)
    out = name
    if squeezed:
        out = f"{name}_embedding" if f"{name}_embedding" not in computed else f"{name}_embedding_{len(computed)}"
        graph.node.append(helper.make_node("Flatten", [name], [out], axis=1, name="edgetl_embedding_flatten"))
    batch = inputs[0].type.tensor_type.shape.dim[0] if inputs and inputs[0].type.tensor_type.shape.dim else None
    batch_dim = batch.dim_param if batch is not None and batch.HasField("dim_param") else (
        batch.dim_value if batch is not None and batch.HasField("dim_value") else None)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(out, elem, [batch_dim, int(nd[1])]))
    onnx.save(model, str(dst))
    return Cut(dst, out, name, shape, squeezed)


def _run_shape(path: Path, what: str) -> tuple[int, ...]:
    """The output shape onnxruntime gives one zero frame (batch 1) of `path`; a model it cannot run is refused."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (i,) = session.get_inputs()
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        dtype = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(i.type)
        if dtype is None:
            raise ConfigError(f"{what} takes {i.type} input; edgetl feeds images as float32 or uint8",
                              "export the model with a float32 or uint8 image input")
        y = session.run(None, {i.name: np.zeros(shape, dtype)})[0]
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{what} has more than one input; a feature extractor takes one image",
                          "export the model with the image as its only input") from None
    except Exception as exc:  # onnxruntime raises its own types for a graph it cannot load or run
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"onnxruntime cannot run {what} cut at its embedding: {first}",
                          "check the model with onnxruntime alone, or name another --output") from None
    return tuple(int(d) for d in y.shape)
