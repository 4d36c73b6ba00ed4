"""TFLite full-integer int8 through litert-torch's PT2E quantizer: int8 weights per channel,
int8 activations, int8 input and output tensors (their scale/zero-point are read back from
the model and recorded)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from edgetl.console import QUIET, Console, silenced
from edgetl.errors import converting
from edgetl.export.tflite import channels_last, nhwc, to_tflite
from edgetl.quantize.ranges import EntropyObserver, PercentileObserver


def quantizer(method: str, keep_float: tuple[str, ...], *, qat: bool = False):
    """litert-torch's quantizer as edgetl configures it: `method`'s observer for the activations, or,
    with `qat`, fake quantization following the batches (litert-torch's own QAT observers) so that
    training sees int8 and learns the ranges it will be converted with."""
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

    base = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    if qat:  # is_qat stays False below: it would add litert-torch's conv+BN QAT annotators (broken, its #355);
        act = base.input_activation  # the BatchNorms are folded before QAT instead
    else:
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
    backbone.eval()
    sample = torch.from_numpy(inputs[:1])
    with silenced(), torch.no_grad(), converting("int8 preparation (torch.export + PT2E)",
                                                 "this backbone does not export for TFLite int8: use --format onnx"):
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        q = quantizer(method, keep_float)
        graph = torch.export.export(channels_last(backbone).eval(), (sample,), strict=True).module()
        graph = prepare_pt2e(graph, q)
        for i in range(len(inputs)):
            graph(torch.from_numpy(inputs[i : i + 1]))
        graph = convert_pt2e(graph, fold_quantize=False)
    return graph, q


def quantize(backbone: torch.nn.Module, out: Path, inputs: np.ndarray, method: str, *,
             keep_float: tuple[str, ...] = (), refinements: tuple[str, ...] = ()
             ) -> tuple[tuple[str, ...], torch.fx.GraphModule]:
    """Write a full-int8 .tflite of `backbone` calibrated on `inputs` (float NHWC); returns the
    modules left float (`keep_float` and the layers feeding them) and the q/dq torch graph.
    `refinements`: "bias_correction" corrects the converted graph's biases before it is written
    (`edgetl.quantize.refine`)."""
    graph, q = convert(backbone, inputs, method, keep_float=keep_float)
    if "bias_correction" in refinements:
        from edgetl.quantize.refine import bias_correct_graph

        bias_correct_graph(graph, inputs)
    with silenced():  # litert-torch's import wakes TensorFlow's and absl's loggers
        from litert_torch.quantize.quant_config import QuantConfig

    to_tflite(graph, torch.from_numpy(inputs[:1]), out, quant_config=QuantConfig(pt2e_quantizer=q))
    return getattr(q, "kept", ()), graph


def sensitivity(graph: torch.fx.GraphModule, inputs: np.ndarray, *, console: Console = QUIET,
                deadline: float | None = None) -> dict[str, float]:
    """Per quantized conv/linear module, the SQNR in dB (lower = more sensitive) of the model's output
    when that layer alone is quantized (its input activation and weights, the calibrated ranges;
    every other q/dq passes float through), against the float model, on calibration inputs.
    Judged at the output, as for ONNX: a layer whose local error is small but grows on the way
    down ranks by what it does to the embedding. Past `deadline` (time.perf_counter()), the layers
    measured so far are returned."""
    qd = torch.ops.quantized_decomposed
    qdq_ops = {qd.quantize_per_tensor.default, qd.quantize_per_channel.default, qd.quantize_per_tensor.tensor,
               qd.dequantize_per_tensor.default, qd.dequantize_per_channel.default,
               qd.dequantize_per_tensor.tensor}

    class OneLayer(torch.fx.Interpreter):
        """Runs the q/dq graph with only the q/dq nodes in `active` quantizing."""

        def __init__(self, module, active: set):
            super().__init__(module, garbage_collect_values=False)  # a dq may reach back past its q
            self.active = active

        def run_node(self, n):
            if n.op == "call_function" and n.target in qdq_ops and n not in self.active:
                src = n.args[0]
                if isinstance(src, torch.fx.Node) and src.target in qdq_ops:  # a dq whose q may be shared
                    return self.env[src.args[0]]  # with an active layer: take the float it quantized
                return self.env[src]
            return super().run_node(n)

    def qdq_feeding(layer) -> set:
        active = set()
        for arg in layer.args[:2]:  # input activation and weight: dq <- q
            while isinstance(arg, torch.fx.Node) and arg.op == "call_function" and arg.target in qdq_ops:
                active.add(arg)
                arg = arg.args[0]
        return active

    def run(active: set) -> torch.Tensor:  # the exported graph takes one image at a time
        return torch.cat([OneLayer(graph, active).run(torch.from_numpy(inputs[i : i + 1]))[0]
                          for i in range(len(inputs))]).double()

    layers = [n for n in graph.graph.nodes if n.op == "call_function" and n.target in _LAYERS and qdq_feeding(n)]
    with torch.no_grad(), silenced(), console.task("ranking layers by sensitivity", len(layers), "layers") as advance:
        reference = run(set())
        signal = max(float(torch.sum(reference**2)), 1e-30)
        scores = {}
        for layer in layers:
            if deadline is not None and time.perf_counter() >= deadline:
                console.log(f"time bound reached: ranked {len(scores)} of {len(layers)} layers")
                break
            noise = float(torch.sum((run(qdq_feeding(layer)) - reference) ** 2)) / signal
            scores[_module_of(layer)] = -10.0 * math.log10(max(noise, 1e-12))
            advance(1)
    return scores


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
