"""Post-training refinements that cost seconds: cross-layer equalization and bias correction
(Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction", 2019;
NNCF's FastBiasCorrection and AIMET do the same).

- **Bias correction.** Rounding a layer's weights to int8 shifts the mean of its output:
  E[W_q x] - E[W x] = (W_q - W) E[x]. With E[x] measured per input channel on the calibration
  images, that shift is subtracted from the layer's bias, so int8 keeps the float model's mean
  activations (what a head standardising its features, and every ReLU after it, is sensitive to).
  Both formats: on the prepared fp32 ONNX before onnxruntime quantizes it (weights rounded as
  onnxruntime rounds them: per channel, symmetric, [-127, 127]), and on the PT2E q/dq graph before
  litert-torch converts it (its own rounded weights).
- **Cross-layer equalization** (ONNX). For two convs with only a ReLU (or nothing) between them,
  output channel i of the first is scaled by 1/s_i and input channel i of the second by s_i,
  s_i = sqrt(r1_i / r2_i) for their weight ranges r1, r2: the same function (ReLU commutes with a
  positive scale), with per-channel ranges balanced, so neither layer's activations nor weights
  carry one channel that spends the others' int8 levels. ReLU6 and hard-swish do not commute with
  a scale, so such pairs are left as they are ("where the graph allows"); so are pairs whose middle
  tensor has other readers (residuals). The TFLite path equalizes nothing: its PT2E graph still
  holds the BatchNorms when it is made, and folding them first is litert-torch's job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.console import silenced

WEIGHT_QMAX = 127  # symmetric int8 weights, as onnxruntime and litert-torch store them


@dataclass(frozen=True)
class Refined:
    """What a refinement changed: `layers` corrected or equalized, and the largest relative change."""

    name: str
    layers: int
    detail: float = 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "layers": self.layers, "detail": round(float(self.detail), 4)}


def rounded_per_channel(w: np.ndarray) -> np.ndarray:
    """`w` (output channels first) rounded to symmetric int8 per output channel and back."""
    flat = w.reshape(len(w), -1)
    scale = np.maximum(np.abs(flat).max(1), 1e-12) / WEIGHT_QMAX
    q = np.clip(np.rint(flat / scale[:, None]), -WEIGHT_QMAX, WEIGHT_QMAX) * scale[:, None]
    return q.reshape(w.shape).astype(w.dtype)


def bias_shift(dw: np.ndarray, mean_in: np.ndarray, groups: int = 1) -> np.ndarray:
    """Per output channel, (W_q - W) E[x]: `dw` is the weight error (O, I/groups, *kernel) or (O, I),
    `mean_in` the input's mean per channel (padding at the borders is not counted)."""
    out = dw.shape[0]
    summed = dw.reshape(out, dw.shape[1], -1).sum(2)  # over the kernel window
    per_group_in, per_group_out = summed.shape[1], out // groups
    shift = np.empty(out, np.float64)
    for g in range(groups):
        rows = slice(g * per_group_out, (g + 1) * per_group_out)
        shift[rows] = summed[rows] @ mean_in[g * per_group_in : (g + 1) * per_group_in]
    return shift


# -- ONNX ----------------------------------------------------------------------------------------

def _attr(node, name: str, default):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _weighted(model):
    """(node, weight initializer, bias initializer name or None, groups) for each Conv/Gemm with constant weights."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if node.op_type == "Gemm" and (_attr(node, "transA", 0) or not _attr(node, "transB", 0)):
            continue  # only y = x W^T + b, the layout torch exports
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        yield node, inits[node.input[1]], bias, int(_attr(node, "group", 1))


def _input_means(model, names: list[str], inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Mean per channel (axis 1) of each named tensor of the fp32 model over `inputs`."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    with silenced():
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    batch = feed.shape[0] if isinstance(feed.shape[0], int) else 1
    sums: dict[str, np.ndarray] = {}
    count = 0
    for start in range(0, len(inputs) - batch + 1, batch):
        outs = session.run(names, {feed.name: inputs[start : start + batch]})
        for name, value in zip(names, outs, strict=True):
            axes = tuple(i for i in range(value.ndim) if i != 1)
            sums[name] = sums.get(name, 0.0) + value.astype(np.float64).mean(axes) * batch
        count += batch
    return {n: s / max(count, 1) for n, s in sums.items()}


def bias_correct_onnx(src: Path, out: Path, inputs: np.ndarray, *, skip: tuple[str, ...] = ()) -> Refined:
    """`src` (a prepared fp32 model) with each Conv/Gemm bias corrected for its int8 weights' mean shift;
    the nodes in `skip` (kept float) keep their bias: their weights are not rounded."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    layers = [layer for layer in _weighted(model) if layer[0].name not in skip]
    means = _input_means(model, sorted({node.input[0] for node, *_ in layers}), inputs)
    inits = {i.name: i for i in model.graph.initializer}
    corrected, largest = 0, 0.0
    for node, weight, bias, groups in layers:
        w = numpy_helper.to_array(weight).astype(np.float64)
        mean_in = means[node.input[0]]
        if w.ndim < 2 or mean_in.shape[0] != (w.shape[1] * groups if node.op_type == "Conv" else w.shape[1]):
            continue
        shift = bias_shift(rounded_per_channel(w) - w, mean_in, groups if node.op_type == "Conv" else 1)
        if bias is None:  # a conv without one gets a zero bias to correct
            bias = f"{weight.name}_corrected_bias"
            model.graph.initializer.append(numpy_helper.from_array(np.zeros(w.shape[0], np.float32), bias))
            inits[bias] = model.graph.initializer[-1]
            node.input.append(bias)
        b = numpy_helper.to_array(inits[bias]).astype(np.float64)
        inits[bias].CopyFrom(numpy_helper.from_array((b - shift).astype(np.float32), bias))
        largest = max(largest, float(np.abs(shift).max() / max(np.abs(b).max(), 1e-12)))
        corrected += 1
    onnx.save(model, str(out))
    return Refined("bias_correction", corrected, largest)


def equalize_onnx(src: Path, out: Path) -> Refined:
    """`src` with cross-layer equalization over each Conv -> [Relu] -> Conv pair whose middle has one reader."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    outputs = {o.name for o in model.graph.output}
    convs = {node.output[0]: (node, w, b, g) for node, w, b, g in _weighted(model) if node.op_type == "Conv"}

    def only_reader(tensor: str):
        users = consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in outputs else None

    pairs, largest = 0, 0.0
    for first, w1i, b1, g1 in list(convs.values()):
        nxt = only_reader(first.output[0])
        if nxt is not None and nxt.op_type == "Relu":
            nxt = only_reader(nxt.output[0])
        if nxt is None or nxt.output[0] not in convs:
            continue
        second, w2i, _, g2 = convs[nxt.output[0]]
        w1, w2 = numpy_helper.to_array(w1i).astype(np.float64), numpy_helper.to_array(w2i).astype(np.float64)
        channels = w1.shape[0]
        if g1 != 1 and g1 != channels:  # grouped convs other than depthwise: leave them
            continue
        if g2 == 1 and w2.shape[1] == channels:  # a dense second conv reads every channel
            r2 = np.abs(w2).max(axis=(0, *range(2, w2.ndim)))
        elif g2 == channels and w2.shape[0] == channels and w2.shape[1] == 1:  # depthwise: channel i is its own
            r2 = np.abs(w2.reshape(channels, -1)).max(1)
        else:
            continue
        r1 = np.abs(w1.reshape(channels, -1)).max(1)
        s = np.where((r1 > 0) & (r2 > 0), np.sqrt(np.maximum(r1, 1e-12) / np.maximum(r2, 1e-12)), 1.0)
        w1 = w1 / s.reshape(-1, *[1] * (w1.ndim - 1))
        if g2 == 1:
            w2 = w2 * s.reshape(1, -1, *[1] * (w2.ndim - 2))
        else:
            w2 = w2 * s.reshape(-1, *[1] * (w2.ndim - 1))
        w1i.CopyFrom(numpy_helper.from_array(w1.astype(np.float32), w1i.name))
        w2i.CopyFrom(numpy_helper.from_array(w2.astype(np.float32), w2i.name))
        if b1 is not None:
            b = numpy_helper.to_array(inits[b1]).astype(np.float64) / s
            inits[b1].CopyFrom(numpy_helper.from_array(b.astype(np.float32), b1))
        largest = max(largest, float(np.abs(np.log(s)).max()) if len(s) else 0.0)
        pairs += 1
    onnx.save(model, str(out))
    return Refined("equalization", pairs, math.exp(largest) if pairs else 1.0)


# -- the PT2E graph (TFLite) ---------------------------------------------------------------------

def bias_correct_graph(graph, inputs: np.ndarray) -> Refined:
    """Correct, in place, the bias of each conv/linear of a PT2E-converted q/dq graph for its own rounded
    weights' mean shift, E[x] taken from the graph's (quantized) inputs to that layer over `inputs`."""
    import torch

    layer_ops = {torch.ops.aten.conv2d.default, torch.ops.aten.linear.default}  # as the TFLite path quantizes
    qd = torch.ops.quantized_decomposed
    dequant = {qd.dequantize_per_channel.default, qd.dequantize_per_tensor.default}
    layers = []
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target not in layer_ops or len(node.args) < 3:
            continue
        w_dq, bias = node.args[1], node.args[2]
        if not (isinstance(w_dq, torch.fx.Node) and w_dq.target in dequant and isinstance(bias, torch.fx.Node)
                and bias.op == "get_attr"):
            continue
        q = w_dq.args[0]
        if not (isinstance(q, torch.fx.Node) and isinstance(q.args[0], torch.fx.Node) and q.args[0].op == "get_attr"):
            continue
        layers.append((node, w_dq, q, q.args[0], bias))
    if not layers:
        return Refined("bias_correction", 0)

    def value(n):
        if isinstance(n, torch.fx.Node):
            if n.op == "get_attr":
                return _attr_of(graph, n.target)
            return n.target(*[value(a) for a in n.args], **{k: value(v) for k, v in n.kwargs.items()})
        if isinstance(n, list | tuple):
            return type(n)(value(a) for a in n)
        return n

    sums: dict = {}
    wanted = {node.args[0]: node for node, *_ in layers}

    class Means(torch.fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            if n in wanted:
                x = result.detach().double()
                axes = tuple(i for i in range(x.ndim) if i != 1)
                sums[n] = sums.get(n, 0.0) + x.mean(axes)
            return result

    with torch.no_grad():
        for i in range(len(inputs)):
            Means(graph).run(torch.from_numpy(inputs[i : i + 1]))
        corrected, largest = 0, 0.0
        for node, w_dq, _, w_attr, bias in layers:
            w = _attr_of(graph, w_attr.target).detach().double()
            dw = (value(w_dq).double() - w).numpy()
            mean_in = (sums[node.args[0]] / len(inputs)).numpy()
            groups = int(node.args[6]) if node.target != torch.ops.aten.linear.default and len(node.args) > 6 else 1
            if mean_in.shape[0] != dw.shape[1] * groups:
                continue
            b = _attr_of(graph, bias.target)
            shift = torch.from_numpy(bias_shift(dw, mean_in, groups)).to(b.dtype)
            largest = max(largest, float(shift.abs().max() / b.abs().max().clamp(min=1e-12)))
            b.data -= shift
            corrected += 1
    return Refined("bias_correction", corrected, largest)


def _attr_of(module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module
