import importlib
import re
from pathlib import Path

import numpy as np
import pytest
import tomllib

from edgetl import targets
from edgetl.errors import ConfigError
from edgetl.runtime import engines
from edgetl.runtime.engines import Engine, TensorSpec, dequantize, quantize, table


def relu_onnx(path: Path, shape=(1, 3, 8, 8)) -> Path:
    """A one-node ONNX model (Relu) taking `shape`; a str in it is a dynamic dimension."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "relu", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def relu_tflite(path: Path, shape=(1, 8, 8, 3)) -> Path:
    """A one-op .tflite model (RELU) taking `shape`, written with the schema ai-edge-litert ships."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = fb.ModelT()
    model.version, code = 3, fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.RELU
    code.version = 1
    model.operatorCodes, model.buffers = [code], [fb.BufferT()]
    graph = fb.SubGraphT()
    graph.tensors = []
    for name in ("x", "y"):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), fb.TensorType.FLOAT32, 0
        graph.tensors.append(t)
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    graph.inputs, graph.outputs, graph.operators = [0], [1], [op]
    model.subgraphs = [graph]
    flatbuffer_utils.write_model(model, str(path))
    return path


def test_quantize_round_trips_within_half_a_step():
    spec = TensorSpec("x", (1, 4), "int8", scale=0.05, zero_point=-3)
    x = np.array([[-1.0, 0.0, 0.333, 2.0]], np.float32)
    q = quantize(x, spec)
    assert q.dtype == np.int8
    assert np.abs(dequantize(q, spec) - x).max() <= 0.025 + 1e-6


def test_quantize_saturates_instead_of_wrapping():
    spec = TensorSpec("x", (1, 2), "int8", scale=0.01, zero_point=0)
    assert quantize(np.array([[100.0, -100.0]], np.float32), spec).tolist() == [[127, -128]]


def test_unknown_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"x")
    with pytest.raises(ConfigError, match="no engine runs model.pt"):
        engines.load(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        engines.load(tmp_path / "missing.onnx")


@pytest.mark.parametrize("row", table.ENGINES, ids=lambda r: r.name)
def test_every_engine_in_the_table_has_its_two_modules_and_its_extra(row):
    engine = importlib.import_module(row.runtime).ENGINE
    assert issubclass(engine, Engine) and engine.name == row.name
    assert importlib.import_module(row.backend).BACKEND.name == row.name
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert row.extra in pyproject["project"]["optional-dependencies"]
    assert set(row.precisions) <= set(targets.PRECISIONS) and targets.ENGINE_PRECISIONS[row.name] == row.precisions
    assert table.for_suffix(row.suffix).suffix == row.suffix and table.row(row.name) is row


def test_an_unknown_engine_names_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"unknown engine 'coreml' (hint: known engines: "
                                                    f"{', '.join(table.NAMES)})")):
        engines.open_engine("coreml", relu_onnx(tmp_path / "m.onnx"))


@pytest.fixture(params=[".onnx", ".tflite"])
def model_file(request, tmp_path) -> Path:
    make = relu_onnx if request.param == ".onnx" else relu_tflite
    return make(tmp_path / f"relu{request.param}")


def test_an_engine_is_a_context_manager_and_a_closed_one_refuses_work(model_file):
    x = -np.ones((1, *engines.load(model_file).input.shape[1:]), np.float32)
    with engines.load(model_file) as engine:
        assert engine.run(x).max() == 0.0 and not engine.closed
    assert engine.closed
    held = engine.session if model_file.suffix == ".onnx" else engine.interpreter
    assert held is None  # the session / interpreter is dropped, and its memory with it
    for use in (engine.run, engine.invoke):
        with pytest.raises(ConfigError, match=f"the {engine.name} engine is closed") as err:
            use(x)
        assert "\n" not in str(err.value)
    engine.close()  # twice is fine


@pytest.mark.parametrize("given, hint", [
    (np.zeros((1, 8, 8, 3), np.float32), "transpose it to the model's layout"),
    (np.zeros((3, 8, 8), np.float32), r"add the batch dimension: x\[None\]"),
    (np.zeros((2, 3, 16, 16), np.float32), "resize and lay it out as the bundle's preprocess.json says"),
    (np.zeros((1, 3, 8, 8), np.uint8), "normalize the pixels first"),
    (np.array([[["a"] * 8] * 8] * 3)[None], "pass a float array"),
])
def test_run_refuses_input_of_another_shape_or_kind_before_invoking(tmp_path, given, hint):
    engine = engines.load(relu_onnx(tmp_path / "m.onnx"))
    engine._invoke = lambda x: pytest.fail("invoked with input it should have refused")
    got = f"{tuple(given.shape)} {given.dtype}"
    with pytest.raises(ConfigError, match=re.escape(f"the model takes (N, 3, 8, 8) float32, got {got}")) as err:
        engine.run(given)
    assert re.search(hint, err.value.hint) and "\n" not in str(err.value)


def test_run_takes_any_float_input_of_the_right_shape_and_any_size_of_a_dynamic_dimension(tmp_path):
    fixed = engines.load(relu_onnx(tmp_path / "fixed.onnx"))
    x = -np.ones((3, 3, 8, 8))  # float64, three frames through a batch-1 model
    assert fixed.run(x).shape == (3, 3, 8, 8) and fixed.run(x.tolist()).dtype == np.float32
    dynamic = engines.load(relu_onnx(tmp_path / "dynamic.onnx", ("N", 3, "H", "W")))
    assert dynamic.run(np.ones((2, 3, 5, 7), np.float16)).shape == (2, 3, 5, 7)
    with pytest.raises(ConfigError, match=re.escape("the model takes (N, 3, ?, ?) float32, got (2, 4, 5, 7)")):
        dynamic.run(np.ones((2, 4, 5, 7), np.float32))
