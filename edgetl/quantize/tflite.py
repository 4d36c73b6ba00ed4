"""TFLite full-integer int8 through litert-torch's PT2E quantizer: int8 weights per channel,
int8 activations, int8 input and output tensors (their scale/zero-point are read back from
the model and recorded)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from edgetl.console import silenced
from edgetl.export.tflite import channels_last, nhwc, to_tflite
from edgetl.quantize.ranges import EntropyObserver, PercentileObserver


def _quantizer(method: str, keep_float: tuple[str, ...]):
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.pt2e_quantizer_utils import QuantizationConfig
    from torchao.quantization.pt2e.observer import MinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    class Quantizer(PT2EQuantizer):
        """litert-torch's quantizer, leaving the ops of `keep_float` modules unannotated (float).
        (Its own set_module_name refuses None and reads names from stack keys, which are ids
        under this torch.)"""

        def _annotate_for_static_quantization_config(self, model):
            kept = with_producers(model, keep_float)
            self.kept = tuple(sorted(kept))
            self._annotate_all_static_patterns(model, self.global_config, lambda n: not (_modules_of(n) & kept))
            _quantize_after_clamp(model)
            _own_range_after_pool(model, act)
            return model

    base = get_symmetric_quantization_config(is_per_channel=True)
    observer = {"minmax": MinMaxObserver, "entropy": EntropyObserver, "percentile": PercentileObserver}[method]
    act = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
                           is_dynamic=False, observer_or_fake_quant_ctr=observer.with_args(eps=2**-12))
    config = QuantizationConfig(act, act, base.weight, base.bias, base.fixed_qparams, False, False)
    return Quantizer().set_global(config)


_CLAMPS = {torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default, torch.ops.aten.relu.default,
           torch.ops.aten.relu_.default, torch.ops.aten.clamp.default}
_LAYERS = {torch.ops.aten.conv2d.default, torch.ops.aten.linear.default}


def _quantize_after_clamp(model: torch.fx.GraphModule) -> None:
    """Move a conv's output quantization past the ReLU6/ReLU that follows it.

    litert-torch's annotator fuses conv+ReLU but not conv+ReLU6 (hardtanh), so it quantizes the
    pre-activation, whose range can be 30x the clipped one: MobileNet/EfficientNet-Lite then lose
    most of their int8 resolution. TFLite fuses the clamp into CONV_2D, so the tensor it really
    stores is the clamped one; quantize that (as onnxruntime does for Conv+Clip)."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in _CLAMPS:
            continue
        src = node.args[0]
        annotation = getattr(src, "meta", {}).get("quantization_annotation")
        if (src.target in _LAYERS and annotation is not None and annotation.output_qspec is not None
                and len(src.users) == 1 and "quantization_annotation" not in node.meta):
            node.meta["quantization_annotation"] = QuantizationAnnotation(
                output_qspec=annotation.output_qspec, _annotated=True)
            annotation.output_qspec = None


_POOLS = {torch.ops.aten.adaptive_avg_pool2d.default, torch.ops.aten.mean.dim, torch.ops.aten.avg_pool2d.default}


def _own_range_after_pool(model: torch.fx.GraphModule, qspec) -> None:
    """Give an average pool's output its own int8 range instead of its input's.

    litert-torch shares the pool's input range with its output. A global average is much
    narrower than the per-position values it averages (and it is the embedding the head reads),
    so sharing spends most of the 256 levels on values the pooled tensor never takes. TFLite's
    int8 MEAN/AVERAGE_POOL_2D rescale between their own input and output scales."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    for node in model.graph.nodes:
        annotation = node.meta.get("quantization_annotation") if node.op == "call_function" else None
        if node.target in _POOLS and annotation is not None and isinstance(annotation.output_qspec,
                                                                          SharedQuantizationSpec):
            annotation.output_qspec = qspec


def with_producers(model: torch.fx.GraphModule, names: tuple[str, ...]) -> set[str]:
    """Keeping a layer float also keeps the layers that feed it float (through activations and
    pads): their quantized outputs would otherwise put the kept layer's input back in int8."""
    wanted = set(names)
    todo = [n for n in model.graph.nodes if n.op == "call_function" and n.target in _LAYERS
            and _module_of(n) in wanted]
    while todo:
        for arg in todo.pop().args[:1]:
            if not isinstance(arg, torch.fx.Node) or arg.op != "call_function":
                continue
            if arg.target in _LAYERS:
                wanted.add(_module_of(arg))
            else:
                todo.append(arg)
    return wanted


def convert(backbone: torch.nn.Module, inputs: np.ndarray, method: str, *, keep_float: tuple[str, ...] = ()):
    """The PT2E-converted (q/dq) torch graph of `backbone` calibrated on NHWC float `inputs`, and its quantizer."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    backbone.eval()
    sample = torch.from_numpy(inputs[:1])
    quantizer = _quantizer(method, keep_float)
    with silenced(), torch.no_grad():
        graph = torch.export.export(channels_last(backbone).eval(), (sample,), strict=True).module()
        graph = prepare_pt2e(graph, quantizer)
        for i in range(len(inputs)):
            graph(torch.from_numpy(inputs[i : i + 1]))
        graph = convert_pt2e(graph, fold_quantize=False)
    return graph, quantizer


def quantize(backbone: torch.nn.Module, out: Path, inputs: np.ndarray, method: str, *,
             keep_float: tuple[str, ...] = ()) -> tuple[tuple[str, ...], torch.fx.GraphModule]:
    """Write a full-int8 .tflite of `backbone` calibrated on `inputs` (float NHWC); returns the
    modules left float (`keep_float` and the layers feeding them) and the q/dq torch graph."""
    from litert_torch.quantize.quant_config import QuantConfig

    graph, quantizer = convert(backbone, inputs, method, keep_float=keep_float)
    to_tflite(graph, torch.from_numpy(inputs[:1]), out, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return getattr(quantizer, "kept", ()), graph


def _noise(reference: torch.Tensor, value: torch.Tensor) -> float:
    """Noise-to-signal power ratio of `value` against `reference`."""
    signal = float(torch.sum(reference.double() ** 2))
    return float(torch.sum((reference.double() - value.double()) ** 2)) / max(signal, 1e-30)


def sensitivity(graph: torch.fx.GraphModule, inputs: np.ndarray) -> dict[str, float]:
    """Per quantized conv/linear module, the SQNR (dB; lower = more sensitive) of its output when its
    input and weights are quantized, against the same layer on their float values, on calibration
    inputs. Judged at the layer's output, an outlier channel that swamps the others' resolution
    shows up even though it dominates the input tensor's own norm."""
    qd = torch.ops.quantized_decomposed
    quant_ops = {qd.quantize_per_tensor.default, qd.quantize_per_channel.default, qd.quantize_per_tensor.tensor}
    noise: dict[str, float] = {}

    class Recorder(torch.fx.Interpreter):
        """Runs the q/dq graph and reruns each layer on the float values its dq inputs stand for."""

        def __init__(self, module):
            super().__init__(module)
            self.before = {}

        def run_node(self, n):
            if n.op == "call_function" and n.target in quant_ops:
                self.before[n] = self.env[n.args[0]]
            value = super().run_node(n)
            if n.op == "call_function" and n.target in _LAYERS:
                args = [self._float(a) for a in n.args]
                reference = n.target(*args, **n.kwargs)
                noise[_module_of(n)] = noise.get(_module_of(n), 0.0) + _noise(reference, value) / len(inputs)
            return value

        def _float(self, arg):
            if isinstance(arg, torch.fx.Node):
                source = arg.args[0] if arg.args and isinstance(arg.args[0], torch.fx.Node) else None
                if source is not None and source in self.before:  # a dq of a q: use the float it quantized
                    return self.before[source]
                return self.env[arg]
            return arg

    with torch.no_grad():
        for i in range(len(inputs)):
            Recorder(graph).run(torch.from_numpy(inputs[i : i + 1]))
    return {m: (math.inf if v == 0 else -10.0 * math.log10(v)) for m, v in noise.items()}


def _modules_of(node: torch.fx.Node) -> set[str]:
    """Every module a node sits in, by qualified name (e.g. `body.blocks.3._project_conv`)."""
    stack = node.meta.get("nn_module_stack") or {}
    return {name.removeprefix("L['self'].").removeprefix("wrapped.") for name, _ in stack.values()}


def _module_of(node: torch.fx.Node) -> str:
    """The innermost module a node comes from."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return node.name
    return list(stack.values())[-1][0].removeprefix("L['self'].").removeprefix("wrapped.")


def as_inputs(x_nchw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(nhwc(torch.from_numpy(x_nchw)).numpy())
