"""ONNX int8 through onnxruntime's static quantizer: QDQ format, int8 weights per channel, int8
activations (asymmetric). The same QDQ graph is what TensorRT consumes for explicit int8."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from edgetl.console import QUIET, Console, silenced
from edgetl.quantize.ranges import PERCENTILE


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
    with silenced():
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


WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FRONT = ("Transpose", "Cast", "Mul", "Add", "Slice")  # what a uint8 model's normalisation exports as


def front_nodes(model) -> tuple[str, ...]:
    """The nodes of a uint8-input model's normalisation (cast, scale, offset, layout), from its input
    to the first other op: they stay float, so the int8 model's first quantize is where the float
    model's input was, and mean/std are applied exactly (not as 8-bit constants)."""
    if model.graph.input[0].type.tensor_type.elem_type == 1:  # FLOAT: a float-input model has none
        return ()
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    out, tensor = [], model.graph.input[0].name
    while len(consumers.get(tensor, ())) == 1 and consumers[tensor][0].op_type in FRONT:
        node = consumers[tensor][0]
        out.append(node.name)
        tensor = node.output[0]
    return tuple(out)
ENTROPY_BINS = 2048  # TensorRT's entropy calibrator: 2048 histogram bins searched for 128 int8 levels


def _input(model) -> tuple[str, int]:
    return model.graph.input[0].name, model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1


def _method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def calibrate(pre: Path, inputs: np.ndarray, method: str, cache: Path) -> Path:
    """Activation ranges of `pre` on `inputs` by `method`, saved as onnxruntime's calibration cache,
    so calibration runs once per method and every trial reuses it.

    Entropy searches 2048 bins (TensorRT's setting): through quantize_static, onnxruntime would
    use 128 bins for 128 levels, where its search has one candidate, the full range (= minmax)."""
    import onnx
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options = {"percentile": PERCENTILE}
    if method == "entropy":
        options.update(num_bins=ENTROPY_BINS, num_quantized_bins=128)
    name, batch = _input(onnx.load(str(pre)))
    with tempfile.TemporaryDirectory(prefix="edgetl-calibrate-") as tmp, silenced():
        calibrator = create_calibrator(Path(pre), None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=_method(method), extra_options=options)
        calibrator.collect_data(_Reader(name, inputs, batch))
        save_tensors_data(calibrator.compute_data(), cache)
    return cache


def _quantize_static(pre: Path, out: Path, cache: Path, method: str, **nodes) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with silenced():
        quantize_static(
            str(pre), str(out), None, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=_method(method),
            calibration_cache_path=str(cache),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True}, **nodes)


def _cache(pre: Path, work: Path, inputs: np.ndarray, method: str) -> Path:
    """The method's calibration cache of `pre` in the work dir beside the trial files, made on first use."""
    cache = work / f"calibration-{pre.stem}-{method}.json"  # per source: a refined model has its own ranges
    return cache if cache.is_file() else calibrate(pre, inputs, method, cache)


def quantize(pre: Path, out: Path, inputs: np.ndarray, method: str, *,
             keep_float: tuple[str, ...] = ()) -> tuple[tuple[str, ...], None]:
    """Static QDQ int8 of `pre` (a prepared fp32 model) calibrated on `inputs` (what it takes: uint8 frames or
    float in its layout);
    returns the nodes left float (`keep_float` and what feeds them), and no graph (the file is it)."""
    import onnx

    model = onnx.load(str(pre))
    keep_float = with_producers(model, keep_float)
    _quantize_static(pre, out, _cache(pre, out.parent, inputs, method), method,
                     nodes_to_exclude=list(keep_float) + list(front_nodes(model)))
    return keep_float, None


def sensitivity(pre: Path, method: str, inputs: np.ndarray, work: Path, *, console: Console = QUIET,
                deadline: float | None = None) -> dict[str, float]:
    """Per weighted node (conv/gemm/matmul), the SQNR in dB (lower = more sensitive) of the model's
    output when that node alone is quantized (its input activation and weights, the method's ranges),
    against fp32, on calibration inputs. Judged at the output, a layer early in the network whose
    error grows on the way down ranks by what it does to the embedding, not by its local error.
    Past `deadline` (time.perf_counter()), the nodes measured so far are returned."""
    import onnx

    from edgetl.runtime import engines

    names = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type in WEIGHTED and n.name]
    cache, one = _cache(pre, work, inputs, method), work / "sensitivity.onnx"
    with silenced():
        reference = engines.load(pre, threads=1).run(inputs).astype(np.float64)
    signal = max(float(np.sum(reference**2)), 1e-30)
    scores = {}
    with console.task("ranking layers by sensitivity", len(names), "layers") as advance:
        for name in names:
            if deadline is not None and time.perf_counter() >= deadline:
                console.log(f"time bound reached: ranked {len(scores)} of {len(names)} layers")
                break
            _quantize_static(pre, one, cache, method, nodes_to_quantize=[name])
            with silenced():
                noise = float(np.sum((engines.load(one, threads=1).run(inputs) - reference) ** 2)) / signal
            scores[name] = -10.0 * math.log10(max(noise, 1e-12))
            advance(1)
    return scores
