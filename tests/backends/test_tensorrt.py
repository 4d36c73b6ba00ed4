"""The Jetson path, driven against a recording fake of the `tensorrt` module (no GPU here)."""

import json
import sys

import numpy as np
import pytest

from edgetl.compile import compatibility, compile_bundle
from edgetl.errors import ConfigError
from edgetl.runtime.engines import tensorrt as trt_engine
from edgetl.runtime.verify import open_bundle
from tests.backends import fake_tensorrt


@pytest.fixture
def fake_trt(monkeypatch):
    fake_tensorrt.CALLS.clear()
    monkeypatch.setattr(fake_tensorrt, "__version__", "10.3.0")
    monkeypatch.setattr(fake_tensorrt.OnnxParser, "refuse", {})
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    return fake_tensorrt


@pytest.fixture
def qdq_model(compiled_run):
    return compiled_run / "quantize" / "onnx" / "backbone_int8.onnx"


def test_int8_build_uses_the_parser_explicit_quantization_workspace_and_timing_cache(fake_trt, qdq_model, tmp_path):
    engine, built = trt_engine.cached_engine(qdq_model, "int8", cache=tmp_path, capability="8.7")
    assert built and engine.read_bytes().startswith(b"engine:")
    calls = fake_trt.CALLS
    assert ("create_network", 1) in calls and calls[1][0] == "parse"
    assert ("set_flag", "INT8") in calls and ("set_flag", "FP16") in calls
    assert ("set_memory_pool_limit", "WORKSPACE", trt_engine.WORKSPACE_BYTES) in calls
    key = json.loads((engine.parent / "key.json").read_text())
    assert key["tensorrt"] == "10.3.0" and key["compute_capability"] == "8.7" and key["precision"] == "int8"
    assert (tmp_path / "timing-10.3.0-sm8.7.cache").is_file()


def test_a_matching_cache_is_loaded_and_a_stale_one_is_rebuilt_never_loaded(fake_trt, qdq_model, tmp_path,
                                                                             monkeypatch):
    first, built = trt_engine.cached_engine(qdq_model, "int8", cache=tmp_path, capability="8.7")
    fake_trt.CALLS.clear()
    again, built_again = trt_engine.cached_engine(qdq_model, "int8", cache=tmp_path, capability="8.7")
    assert again == first and not built_again and not fake_trt.CALLS  # no build, no parse
    # another GPU (a Jetson Nano, sm_53) with the same files: stale, rebuilt
    _, rebuilt = trt_engine.cached_engine(qdq_model, "int8", cache=tmp_path, capability="5.3")
    assert rebuilt and json.loads((first.parent / "key.json").read_text())["compute_capability"] == "5.3"
    # a TensorRT upgrade: stale, rebuilt, and the new engine names the new version
    monkeypatch.setattr(fake_trt, "__version__", "10.4.0")
    fake_trt.CALLS.clear()
    engine, rebuilt = trt_engine.cached_engine(qdq_model, "int8", cache=tmp_path, capability="5.3")
    assert rebuilt and engine.read_bytes().endswith(b":10.4.0") and fake_trt.CALLS
    # a damaged key file is a stale key
    (engine.parent / "key.json").write_text("{not json")
    assert trt_engine.cached_engine(qdq_model, "int8", cache=tmp_path, capability="5.3")[1]


def test_fp16_build_sets_fp16_only(fake_trt, compiled_run, tmp_path):
    fp32 = compiled_run / "export" / "onnx" / "backbone.onnx"
    trt_engine.cached_engine(fp32, "fp16", cache=tmp_path, capability="5.3")
    assert ("build_serialized_network", ("FP16",)) in fake_trt.CALLS


def test_a_parser_refusal_is_a_clear_error(fake_trt, qdq_model, tmp_path, monkeypatch):
    monkeypatch.setattr(fake_trt.OnnxParser, "refuse", {"node_Conv_0": "unsupported op"})
    with pytest.raises(ConfigError, match="ONNX parser refused .*node_Conv_0: unsupported op"):
        trt_engine.cached_engine(qdq_model, "int8", cache=tmp_path, capability="8.7")
    assert not list(tmp_path.rglob("engine.plan"))
    # TensorRT before 8.5 refuses a uint8 input: the hint says how to ship one it takes
    monkeypatch.setattr(fake_trt.OnnxParser, "refuse", {"image": "Unsupported ONNX data type: UINT8 (2)"})
    with pytest.raises(ConfigError, match="UINT8.*hint: TensorRT before 8.5 takes no uint8 input: export with "
                                          "--input float"):
        trt_engine.cached_engine(qdq_model, "int8", cache=tmp_path, capability="8.7")


def test_compile_without_tensorrt_ships_onnx_and_defers_the_build(compiled_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not importable, as on this machine
    monkeypatch.setattr("edgetl.backends.tensorrt.tensorrt_available", lambda: False)
    orin = compile_bundle(compiled_run, "jetson-orin-nano", tmp_path / "orin")
    assert orin["engine"] == "tensorrt" and orin["precision"] == "int8" and orin["model"] == "backbone.onnx"
    assert "first load" in orin["deferred"]
    nano = compile_bundle(compiled_run, "jetson-nano", tmp_path / "nano")  # sm_53: no int8, fp16 from fp32
    assert nano["precision"] == "fp16" and "takes no int8" in nano["choice"]
    assert open_bundle(tmp_path / "orin", machine="aarch64").manifest["target"] == "jetson-orin-nano"


def test_compile_where_tensorrt_runs_builds_the_engine_into_the_bundle(fake_trt, compiled_run, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setattr("edgetl.backends.tensorrt.tensorrt_available", lambda: True)
    monkeypatch.setattr(trt_engine, "compute_capability", lambda: "8.7")
    manifest = compile_bundle(compiled_run, "jetson-orin-nano", tmp_path / "orin")
    engines = [n for n in manifest["files"] if n.startswith("engine/")]
    assert any(n.endswith("engine.plan") for n in engines) and any(n.endswith("key.json") for n in engines)
    report = compatibility(compiled_run, "jetson-orin-nano")
    assert report.fully_mapped and "TensorRT 10.3.0" in report.notes[1]


def test_a_tensorrt_bundle_runs_through_the_runtime_with_its_engine_built_on_first_load(
        fake_trt, compiled_run, tmp_path, monkeypatch, signs):
    """Against the fakes (TensorRT and CUDA): the engine is built on first load and cached, the IO
    buffers and copies carry real numbers, and predictions match the ONNX model on onnxruntime."""
    from edgetl.data.imagefolder import scan
    from edgetl.runtime import Model
    from tests.backends.fake_tensorrt import FakeCudart

    monkeypatch.setattr("edgetl.backends.tensorrt.tensorrt_available", lambda: False)
    compile_bundle(compiled_run, "jetson-orin-nano", tmp_path / "orin")
    monkeypatch.setattr(trt_engine, "compute_capability", lambda: "8.7")
    monkeypatch.setattr(trt_engine, "import_cudart", FakeCudart)
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    images = [p for p, _ in scan(signs["test"]).samples][:4]
    model = Model.load(tmp_path / "orin", machine="any")
    assert model.engine.name == "tensorrt" and ("set_flag", "INT8") in fake_trt.CALLS
    assert model.engine.input.dtype == "uint8"  # the same uint8 ONNX: the frame itself crosses to the "GPU"
    assert list((tmp_path / "cache" / "tensorrt").rglob("engine.plan"))
    got = model.predict(images)
    fake_trt.CALLS.clear()
    again = Model.load(tmp_path / "orin", machine="any")  # second load: from the cache, no build
    assert not any(c[0] == "build_serialized_network" for c in fake_trt.CALLS)
    reference = Model.load(compile_and_return(compiled_run, tmp_path), machine="any")
    assert [p.label for p in again.predict(images)] == [p.label for p in got] == [
        p.label for p in reference.predict(images)]
    np.testing.assert_allclose(again.embed(images), reference.embed(images), rtol=1e-5, atol=1e-5)


def compile_and_return(run, tmp_path):
    """The same QDQ ONNX on onnxruntime (host-cpu forced to int8) as the reference."""
    import shutil

    from edgetl.runtime.verify import open_bundle

    b = open_bundle(tmp_path / "orin", machine="any")
    ref = tmp_path / "ref"
    shutil.copytree(b.path, ref)
    manifest = json.loads((ref / "manifest.json").read_text())
    manifest.update(engine="onnxruntime")
    (ref / "manifest.json").write_text(json.dumps(manifest))
    return ref


def test_close_frees_the_context_engine_runtime_buffers_and_stream(fake_trt, tmp_path, monkeypatch):
    """Against the fakes: what the engine allocated is freed on close, the context before its engine
    before its runtime (TensorRT's order), and a closed engine refuses work in one line."""
    from tests.backends.fake_tensorrt import FakeCudart
    from tests.runtime.test_engines import relu_onnx

    monkeypatch.setattr(trt_engine, "compute_capability", lambda: "8.7")
    cudart = FakeCudart()
    x = -np.ones((1, 3, 8, 8), np.float32)
    with trt_engine.TensorRTEngine(relu_onnx(tmp_path / "relu.onnx"), "fp32", cache=tmp_path / "cache",
                                   trt=fake_trt, cudart=cudart) as engine:
        assert engine.run(x).max() == 0.0
        assert cudart.allocated == 2 and len(cudart.buffers) == 2 and len(cudart.streams) == 1
        serial = engine.runtime.serial
        fake_trt.RELEASED.clear()
    assert not cudart.buffers and not cudart.streams
    assert [kind for kind, s in fake_trt.RELEASED if s == serial] == ["context", "engine", "runtime"]
    with pytest.raises(ConfigError, match="the tensorrt engine is closed") as err:
        engine.run(x)
    assert "\n" not in str(err.value)
