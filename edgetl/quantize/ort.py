"""ONNX int8 through onnxruntime's static quantizer: QDQ format, int8 weights per channel, int8
activations (asymmetric). The same QDQ graph is what TensorRT consumes for explicit int8."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from edgetl.console import silenced
from edgetl.quantize import PERCENTILE

NOISE_FLOOR = 1e-4  # -40 dB: below this an error is too small to rank by


class _Reader:
    """Feeds calibration inputs one model-sized batch at a time (the CalibrationDataReader protocol)."""

    def __init__(self, name: str, inputs: np.ndarray, batch: int):
        self.batches = iter([{name: inputs[i : i + batch]} for i in range(0, len(inputs) - batch + 1, batch)])

    def get_next(self):
        return next(self.batches, None)

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def prepare(fp32: Path, out: Path) -> Path:
    """ORT's recommended pre-processing: shape inference and graph optimisation before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger().setLevel(logging.ERROR)
    quant_pre_process(str(fp32), str(out), skip_symbolic_shape=True)
    return out


def with_producers(model, names: tuple[str, ...]) -> tuple[str, ...]:
    """Keeping a node float in QDQ also needs the nodes that feed it float: onnxruntime quantizes a
    quantized node's output whoever reads it, so the tensor into the kept node would stay int8."""
    produced_by = {out: node for node in model.graph.node for out in node.output}
    wanted = set(names)
    todo = [node for node in model.graph.node if node.name in names]
    while todo:  # back through activations and other unweighted ops to the layer that made the tensor
        for i in todo.pop().input:
            feeder = produced_by.get(i)
            if feeder is not None and feeder.name not in wanted:
                wanted.add(feeder.name)
                if feeder.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
                    todo.append(feeder)
    return tuple(n.name for n in model.graph.node if n.name in wanted)


def quantize(pre: Path, out: Path, inputs: np.ndarray, method: str, *,
             keep_float: tuple[str, ...] = ()) -> tuple[tuple[str, ...], None]:
    """Static QDQ int8 of `pre` (a prepared fp32 model) calibrated on `inputs` (float, model layout);
    returns the nodes left float (`keep_float` and what feeds them), and no graph (the file is it)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(pre))
    name = model.graph.input[0].name
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1
    keep_float = with_producers(model, keep_float)
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with silenced():  # its calibrators print progress with print()
        quantize_static(
            str(pre), str(out), _Reader(name, inputs, batch), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=calibrate,
            nodes_to_exclude=list(keep_float),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "CalibPercentile": PERCENTILE},
        )
    return keep_float, None


def sensitivity(pre: Path, qdq: Path, inputs: np.ndarray, work: Path) -> dict[str, float]:
    """Per node, how much it amplifies quantization error (dB, negated: lower = more sensitive): the
    noise against the fp32 model at its output over the noise already at its inputs, on
    calibration inputs. Activations are matched by name with onnxruntime's qdq_loss_debug."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    model = onnx.load(str(pre))
    name = model.graph.input[0].name
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1
    augmented = {}
    for label, path in (("float", pre), ("qdq", qdq)):
        augmented[label] = work / f"{label}.augmented.onnx"
        dbg.modify_model_output_intermediate_tensors(str(path), str(augmented[label]))
    with silenced():
        float_acts = dbg.collect_activations(str(augmented["float"]), _Reader(name, inputs, batch))
        qdq_acts = dbg.collect_activations(str(augmented["qdq"]), _Reader(name, inputs, batch))
    noise = {}
    for tensor, values in qdq_acts.items():
        if tensor in float_acts:
            noise[tensor] = 10 ** (-dbg.compute_signal_to_quantization_noice_ratio(float_acts[tensor], values) / 10)
    graph = onnx.load(str(qdq)).graph
    produced_by = {out: node for node in graph.node for out in node.output}

    def original(tensor: str) -> str:
        """Follow DequantizeLinear <- QuantizeLinear back to the tensor they stand for."""
        node = produced_by.get(tensor)
        while node is not None and node.op_type in ("DequantizeLinear", "QuantizeLinear"):
            tensor = node.input[0]
            node = produced_by.get(tensor)
        return tensor

    scores = {}
    for node in graph.node:
        if node.op_type in ("DequantizeLinear", "QuantizeLinear") or not node.name:
            continue
        out = [noise[o] for o in node.output if o in noise]
        if not out:
            continue
        before = max([noise.get(original(i), 0.0) for i in node.input if i], default=0.0)
        # how much the node multiplies the error it receives: a layer that turns a faint input error
        # into a large output error is where int8 fails (a difference would also blame every layer
        # downstream of it, which only passes on an already ruined signal)
        scores[node.name] = -10.0 * math.log10(max(max(out), NOISE_FLOOR) / max(before, NOISE_FLOOR))
    return scores
