"""`--method auto`'s escalation past calibration: bias correction, equalization, quantization-aware fine-tuning."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgetl.cli import main
from edgetl.quantize import QuantizeError, quantize, refine
from edgetl.quantize.qat import QatConfig, fold_weight_quantize
from tests.quantize.handmade import fragile_run, rounding_run


def _steps(record) -> dict:
    return {s["step"]: s for s in record["steps"]}


def test_bias_correction_and_equalization_rescue_weights_that_all_round_one_way(signs, tmp_path, calib_file):
    run = rounding_run(signs, tmp_path, step=0.01, relu=True)
    record = quantize(run.path, calib_file, fmt="onnx", method="auto", max_drop=5.0, run=run)
    steps = _steps(record)
    assert steps["calibration"]["ran"] and steps["calibration"]["drop"] > 30  # every method: the shift is theirs too
    assert steps["refinement"]["kept"] and steps["refinement"]["gain"] > 25
    assert record["drop"] <= 5.0 and record["refinements"] and record["float_layers"] == []
    assert not steps["float_fallback"]["ran"] and not steps["qat"]["ran"]  # each step only when the one before missed
    assert "not needed" in steps["qat"]["note"] and record["qat"] is None
    corrected = [t for t in record["trials"] if t["refinements"] == ["bias_correction"]]
    assert corrected and corrected[0]["drop"] < steps["calibration"]["drop"] - 25  # bias correction alone does most


def test_tflite_bias_correction_corrects_the_converted_graph_too(signs, tmp_path, calib_file):
    run = rounding_run(signs, tmp_path, step=0.01, relu=True)
    with pytest.raises(QuantizeError) as missed:  # no float fallback or QAT allowed: the refinement's figures
        quantize(run.path, calib_file, fmt="tflite", method="auto", max_drop=0.0, run=run, escalate=("refinement",))
    trials = {"+".join([t["method"], *t["refinements"]]): t for t in missed.value.trials}
    plain = min(t["drop"] for t in missed.value.trials if not t["refinements"])
    assert plain > 30 and trials["minmax+bias_correction"]["drop"] < plain - 25
    assert not (run.path / "quantize").exists()


def test_bias_shift_is_the_mean_output_error_of_rounded_weights():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 2, 3, 3))  # a conv with 2 groups of 2 input channels
    dw = refine.rounded_per_channel(w) - w
    x = torch.from_numpy(rng.uniform(0, 2, size=(64, 4, 5, 5)))
    error = torch.nn.functional.conv2d(x, torch.from_numpy(dw), groups=2)  # valid windows: no padding
    windows = x.unfold(2, 3, 1).unfold(3, 3, 1)  # the inputs each output position reads
    shift = refine.bias_shift(dw, windows.mean((0, 2, 3, 4, 5)).numpy(), groups=2)
    assert np.allclose(error.mean((0, 2, 3)).numpy(), shift, atol=0.02 * np.abs(shift).max())
    assert np.abs(dw).max() <= np.abs(w).max() / refine.WEIGHT_QMAX / 2 + 1e-12


class Pairs(nn.Module):
    """conv -> ReLU -> depthwise conv -> conv, with one channel 50x the others; and a ReLU6 pair, left alone."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.dw, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8), \
            nn.Conv2d(8, 4, 1)
        self.c, self.d = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            self.a.weight[3] *= 50
            self.a.bias[3] *= 50

    def forward(self, x):
        x = self.b(self.dw(torch.relu(self.a(x))))
        return self.d(nn.functional.relu6(self.c(x)))


def test_equalization_keeps_the_function_and_balances_the_channels(tmp_path):
    from edgetl.export.onnx import to_onnx
    from edgetl.runtime import engines

    src, out = tmp_path / "pairs.onnx", tmp_path / "equalized.onnx"
    to_onnx(Pairs().eval(), torch.zeros(1, 3, 16, 16), src, output_name="embedding")
    done = refine.equalize_onnx(src, out)
    assert done.layers == 3  # a->ReLU->dw, dw->b, b->c; not c->ReLU6->d: ReLU6 does not commute with a scale
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    before, after = engines.load(src, threads=1).run(x), engines.load(out, threads=1).run(x)
    assert np.allclose(before, after, rtol=1e-4, atol=1e-4 * np.abs(before).max())

    def spread(path):  # largest / smallest per-output-channel weight range of the first conv
        w = onnx.numpy_helper.to_array(next(i for i in onnx.load(str(path)).graph.initializer
                                            if i.name.endswith("a.weight")))
        r = np.abs(w.reshape(len(w), -1)).max(1)
        return r.max() / r.min()

    assert spread(out) < spread(src) / 5


def test_qat_that_cannot_beat_calibration_is_discarded_with_its_figures(signs, tmp_path, calib_file, capsys):
    run = fragile_run(signs, tmp_path, fragile=False)  # quantizes plainly: nothing for QAT to win
    head_before = dict(np.load(run.path / "head.npz"))
    record = quantize(run.path, calib_file, fmt="onnx", method="qat", max_drop=3.0, run=run,
                      qat=QatConfig(epochs=1))
    steps = _steps(record)
    assert record["method"] != "qat" and steps["calibration"]["kept"] and not steps["qat"]["kept"]
    assert steps["qat"]["ran"] and steps["qat"]["drop"] is not None
    q = record["qat"]
    assert not q["kept"] and "does not beat" in q["reason"] and len(q["history"]) == 2 and q["seconds"] > 0
    assert q["parity"]["top1_agreement"] >= 0.9 and q["drop"] is not None
    out = run.path / "quantize" / "onnx"
    head_after = dict(np.load(out / "head.npz"))  # the run's own head, not the one QAT trained
    assert all(np.array_equal(head_before[k], head_after[k]) for k in ("W", "b"))
    assert [t for t in record["trials"] if t["method"] == "qat"]  # its figures are kept in the record


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_qat_of_a_real_backbone_is_an_int8_artifact_that_computes_what_it_trained(run_dir, calib_file, fmt):
    record = quantize(run_dir, calib_file, fmt=fmt, method="qat", max_drop=100, qat=QatConfig(epochs=1))
    q = record["qat"]
    assert q["epochs"] == 1 and [h["epoch"] for h in q["history"]] == [0, 1] and q["train_seconds"] > 0
    assert q["parity"]["images"] > 0 and q["parity"]["top1_agreement"] >= 0.9  # the converter kept the model
    qat_trial = next(t for t in record["trials"] if t["method"] == "qat")
    assert qat_trial["float_layers"] == [] and abs(qat_trial["int8_top1"] - q["int8_top1"]) < 1e-9


def test_weight_quantize_folding_stores_int8_and_keeps_the_values(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[0.5, -1.0], [0.25, 0.75]], np.float32)
    scale, zp = np.array([1 / 127, 1 / 127], np.float32), np.zeros(2, np.int8)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=0),
         helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=0),
         helper.make_node("MatMul", ["x", "wd"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert fold_weight_quantize(model) == 1
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "MatMul"]
    stored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q = next(v for k, v in stored.items() if k.endswith("_quantized"))
    assert q.dtype == np.int8 and np.array_equal(q, np.rint(w / scale[:, None]).astype(np.int8))
    assert "w" not in stored  # the float weight is gone


def _tree(path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_an_interrupted_qat_leaves_the_run_as_it_was(run_dir, calib_file, tmp_path):
    quantize(run_dir, calib_file, fmt="onnx", method="minmax", max_drop=100)  # an earlier result to keep
    before = _tree(run_dir)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edgetl", "quantize", str(run_dir), "--calib", str(calib_file),
                             "--method", "qat", "--qat-epochs", "20", "--max-drop", "100"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any("QAT epoch 0" in line for line in lines) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "".join(lines)  # it was training when it was stopped
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    err = "".join(lines)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert _tree(run_dir) == before  # the earlier int8 result, byte for byte, and nothing else
    assert sorted(p.name for p in tmp.rglob("*")) == []


@pytest.mark.parametrize(("flags", "message"), [
    (["--method", "qat", "--qat-epochs", "0"], "--qat-epochs must be a whole number from 1 to 100"),
    (["--qat-lr", "-1"], "--qat-lr must be a finite number > 0"),
    (["--escalate", "fallback"], "unknown --escalate step 'fallback'"),
    (["--method", "qta"], "unknown calibration method 'qta'"),
])
def test_bad_qat_flags_are_one_line_errors_before_any_work(run_dir, calib_file, capsys, flags, message):
    assert main(["quantize", str(run_dir), "--calib", str(calib_file), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (run_dir / "quantize").exists()


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_qat_beats_calibration_on_a_net_built_to_lose_under_it_and_ships_its_own_head(signs, tmp_path, calib_file,
                                                                                      fmt):
    from edgetl.backends import Source

    run = rounding_run(signs, tmp_path)
    record = quantize(run.path, calib_file, fmt=fmt, method="qat", max_drop=100, run=run,
                      qat=QatConfig(epochs=10, lr=1e-3))
    steps, q = _steps(record), record["qat"]
    assert steps["calibration"]["drop"] > 30 and q["kept"] and record["method"] == "qat"
    assert record["drop"] < steps["calibration"]["drop"] - 10 and steps["qat"]["gain"] > 10
    assert q["parity"]["top1_agreement"] >= 0.9 and record["float_layers"] == [] and record["int8_verified"]
    convs = record["ops"]["int8_by_type"]
    assert convs.get("Conv", 0) + convs.get("CONV_2D", 0) == 2 and not record["ops"]["float_by_type"].get("Conv")
    shipped = run.path / "quantize" / fmt / "head.npz"
    assert not np.allclose(np.load(shipped)["W"], np.load(run.path / "head.npz")["W"])
    assert Source(run.path).head(fmt, "int8") == shipped  # what an int8 bundle packs: the head QAT trained
    assert Source(run.path).head(fmt, "fp32") != shipped


def test_a_relu_before_a_saturating_quantize_is_bypassed_and_its_tap_reads_the_int8_tensor():
    from onnx import TensorProto, checker, helper, numpy_helper

    from edgetl.quantize.qat import drop_redundant_clamps

    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    s = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    z = numpy_helper.from_array(np.array(-128, np.int8), "z")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("AveragePool", ["r"], ["tap"], kernel_shape=[2, 2], name="tap"),  # read before the Q
         helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"], name="q"),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2]),
         helper.make_tensor_value_info("tap", TensorProto.FLOAT, [1, 2, 1, 1])], [w, s, z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert drop_redundant_clamps(model) == 1  # zero-point -128: the int8 range starts at 0, as the ReLU does
    nodes = {n.name: n for n in model.graph.node}
    assert "relu" not in nodes and nodes["q"].input[0] == "c" and nodes["tap"].input[0] == "y"
    checker.check_model(model)  # still in topological order
