import json
import shutil

import pytest

from edgetl.backends import opcount
from edgetl.cli import main
from edgetl.export import export
from edgetl.quantize import QuantizeError, quantize
from edgetl.runtime.preprocess import PreprocessSpec
from tests.quantize.handmade import fragile_run as _fragile_run


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_quantize_writes_a_verified_int8_model_and_its_record(run_dir, calib_file, fmt):
    record = quantize(run_dir, calib_file, fmt=fmt, method="percentile", max_drop=100)
    out = run_dir / "quantize" / fmt
    assert json.loads((out / "quantize.json").read_text()) == record
    for key in ("fp32_top1", "int8_top1", "drop", "agreement", "method", "float_layers", "sizes_bytes", "latency_ms"):
        assert key in record
    assert record["int8_verified"] and record["ops"]["int8_ops"] > 40
    assert record["ops"]["int8_by_type"].get("Conv", 0) + record["ops"]["int8_by_type"].get("CONV_2D", 0) > 20
    assert record["sizes_bytes"]["int8"] < record["sizes_bytes"]["fp32"] / 2.5
    assert record["latency_ms"]["int8"]["p50_ms"] > 0 and record["test"]["images"] == 24
    assert record["drop"] == pytest.approx(record["fp32_top1"] - record["int8_top1"], abs=0.02)
    spec = PreprocessSpec.from_json((out / "preprocess.json").read_text())
    assert spec.input == "uint8" and spec.layout == "NHWC"  # the int8 model takes the frame itself too
    if fmt == "tflite":  # full-integer: the frame's pixels in (scale 1), int8 out, with the scale/zero-point recorded
        assert record["io"]["input"] | {"name": None} == {"name": None, "shape": [1, 32, 32, 3], "dtype": "uint8",
                                                          "scale": 1.0, "zero_point": 0}
        assert record["io"]["output"]["dtype"] == "int8" and record["io"]["output"]["scale"] > 0
        assert spec.input_scale == 1.0 and spec.input_zero_point == 0


def test_a_float_only_artifact_is_not_int8(run_dir):
    fp32 = export(run_dir, "onnx").backbone
    ops = opcount.count(fp32)
    assert ops.weighted_int8 == 0 and ops.weighted_float > 20
    tfl = opcount.count(export(run_dir, "tflite").backbone)
    assert tfl.weighted_int8 == 0 and tfl.weighted_float > 20


def test_a_quantizer_that_leaves_the_model_float_is_refused(run_dir, calib_file, monkeypatch):
    from edgetl.quantize import ort

    def stays_float(pre, out, inputs, method, *, keep_float=()):
        shutil.copy(pre, out)  # "quantized" file that is the fp32 model
        return tuple(keep_float), None

    monkeypatch.setattr(ort, "quantize", stays_float)
    with pytest.raises(QuantizeError, match="not int8"):
        quantize(run_dir, calib_file, fmt="onnx", method="minmax", max_drop=100)
    assert not (run_dir / "quantize").exists()


def test_unreachable_budget_is_an_error_with_no_artifact(signs, tmp_path, calib_file, capsys):
    run = _fragile_run(signs, tmp_path)
    quantize(run.path, calib_file, fmt="onnx", method="minmax", max_drop=100, run=run)  # an earlier result
    before = (run.path / "quantize" / "onnx" / "quantize.json").read_text()
    with pytest.raises(QuantizeError, match="stays within 3.0 points: the best, minmax .* loses"):
        quantize(run.path, calib_file, fmt="onnx", method="minmax", max_drop=3.0, run=run)
    assert (run.path / "quantize" / "onnx" / "quantize.json").read_text() == before  # earlier result untouched
    assert sorted(p.name for p in (run.path / "quantize").iterdir()) == ["onnx"]  # no temp dirs left
    assert main(["quantize", str(run.path), "--calib", str(calib_file), "--max-drop", "-1"]) == 2
    assert "--max-drop must be between" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_sensitivity_fallback_keeps_the_fewest_fragile_layers_in_float(signs, tmp_path, calib_file, fmt):
    run = _fragile_run(signs, tmp_path)
    record = quantize(run.path, calib_file, fmt=fmt, method="auto", max_drop=3.0, run=run)
    plain = [t for t in record["trials"] if not t["float_layers"] and not t["refinements"]]
    assert len(plain) == 3 and min(t["drop"] for t in plain) > 3.0  # every calibration method fails alone
    steps = {s["step"]: s for s in record["steps"]}
    assert steps["refinement"]["ran"] and not steps["refinement"]["kept"]  # tried first, not enough here
    assert steps["float_fallback"]["kept"] and not steps["qat"]["ran"]  # the fallback met it: no QAT
    assert record["drop"] <= 3.0 and record["fp32_top1"] > 70
    fragile = {"onnx": {"node_conv2d", "node_conv2d_1"}, "tflite": {"stem", "mix"}}[fmt]  # either side of the outlier
    assert record["sensitivity_db"][0][0] in fragile and fragile <= set(record["float_layers"])
    assert record["ops"]["int8_by_type"].get("Conv", 0) + record["ops"]["int8_by_type"].get("CONV_2D", 0) >= 2


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_the_same_net_without_its_outlier_quantizes_with_no_float_layers(signs, tmp_path, calib_file, fmt):
    run = _fragile_run(signs, tmp_path, fragile=False)
    record = quantize(run.path, calib_file, fmt=fmt, method="auto", max_drop=3.0, run=run)
    assert record["drop"] <= 3.0 and record["float_layers"] == [] and record["fp32_top1"] > 70


def test_uint8_io_for_targets_that_ask_scores_as_the_int8_model(run_dir, calib_file, capsys):
    record = quantize(run_dir, calib_file, fmt="tflite", method="minmax", max_drop=100, io="uint8")
    io, int8 = record["io"], record["trials"][0]
    assert io["input"]["dtype"] == "uint8" and io["output"]["dtype"] == "uint8"
    assert 0 <= io["input"]["zero_point"] <= 255 and io["input"]["scale"] > 0
    assert record["int8_top1"] == int8["int8_top1"] and record["agreement"] >= int8["agreement"] - 1e-9
    spec = PreprocessSpec.from_json((run_dir / "quantize" / "tflite" / "preprocess.json").read_text())
    assert spec.dtype == "uint8" and spec.input_zero_point == io["input"]["zero_point"]
    assert main(["quantize", str(run_dir), "--calib", str(calib_file), "--io", "uint8"]) == 2  # onnx: float IO
    assert "--io uint8 applies to tflite only" in capsys.readouterr().err


def test_input_float_re_exports_keeping_the_taps_and_the_int8_model_takes_floats(run_dir, calib_file):
    from edgetl.rundir import RunDir

    export(run_dir, "onnx", taps="none")
    quantize(run_dir, calib_file, fmt="onnx", method="minmax", max_drop=100, input="float")
    found = RunDir(run_dir).quantized("onnx")
    spec = found.spec()
    assert spec.input == "float" and spec.layout == "NCHW" and spec.outputs == ()  # taps: as the export had them
    import onnx

    model = onnx.load(str(found.model))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [n.op_type for n in _consumers(model, model.graph.input[0].name)] == ["QuantizeLinear"]  # normalised
    with pytest.raises(Exception, match="unknown --input 'u8'"):
        quantize(run_dir, calib_file, fmt="onnx", input="u8")


def test_a_uint8_onnx_int8_model_keeps_its_normalisation_float(run_dir, calib_file):
    """The uint8 model is calibrated on the frames themselves, and mean/std are not turned into 8-bit constants:
    the int8 graph's first quantize is where the float model's input was."""
    import onnx

    from edgetl.rundir import RunDir

    quantize(run_dir, calib_file, fmt="onnx", method="minmax", max_drop=100)
    model = onnx.load(str(RunDir(run_dir).quantized("onnx").model))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    chain, tensor = [], model.graph.input[0].name
    while not chain or chain[-1].op_type != "QuantizeLinear":
        (node,) = _consumers(model, tensor)
        chain.append(node)
        tensor = node.output[0]
    assert {"Add", "Cast", "Mul"} <= {n.op_type for n in chain[:-1]} <= {"Add", "Cast", "Mul", "Transpose"}
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert not any(i in dequantized for n in chain for i in n.input)  # mean/std as float constants


def _consumers(model, tensor: str) -> list:
    return [n for n in model.graph.node if tensor in n.input]
