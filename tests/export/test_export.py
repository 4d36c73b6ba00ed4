import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgetl.cli import main
from edgetl.export import export, parity
from edgetl.runtime import engines
from edgetl.train.run import load_run


def test_onnx_export_writes_backbone_head_and_combined_model_with_parity(run_dir):
    result = export(run_dir, "onnx")
    files = sorted(p.name for p in result.path.iterdir())
    assert files == ["backbone.onnx", "export.json", "features.npz", "head.npz", "labels.json", "model.onnx",
                     "preprocess.json"]
    record = json.loads((result.path / "export.json").read_text())
    assert record["parity"]["ok"] and record["parity"]["max_abs_diff"] < 1e-3
    assert record["parity"]["top1_agreement"] == 1.0
    model = onnx.load(str(result.backbone))
    assert model.opset_import[0].version >= 17
    # static, and the frame itself: uint8 NHWC, with mean/std and the layout change as the graph's first ops
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 32, 32, 3]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [n.op_type for n in model.graph.node[:4]] == ["Transpose", "Cast", "Mul", "Add"]
    assert result.spec.input == "uint8" and record["input"] == {"shape": [1, 32, 32, 3], "layout": "NHWC",
                                                                "dtype": "uint8"}
    _taps_are_outputs_and_parity_covers_each(run_dir, result, "onnx")


def test_tflite_export_takes_uint8_frames(run_dir):
    result = export(run_dir, "tflite")
    engine = engines.load(result.backbone)
    assert engine.input.shape == (1, 32, 32, 3) and engine.input.dtype == "uint8" and not engine.input.quantized
    assert result.spec.layout == "NHWC" and result.spec.input == "uint8"
    assert result.record["parity"]["ok"]
    _taps_are_outputs_and_parity_covers_each(run_dir, result, "tflite")


def test_input_float_keeps_the_normalised_tensor_and_agrees_with_uint8(run_dir):
    """--input float: the model takes `normalize`'s output in the format's layout; the uint8 model computes
    the same outputs from the frames themselves (TFLite here; ONNX in tests/runtime/test_model.py)."""
    fmt = "tflite"
    frames = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    uint8 = export(run_dir, fmt)
    with engines.load(uint8.backbone) as engine:
        from_frames = engine.run(frames)
        with pytest.raises(Exception, match="uint8 pixels, not normalised"):  # floats are refused, not guessed
            engine.run(uint8.spec.normalize(frames))
    floats = export(run_dir, fmt, input="float")
    assert floats.spec.input == "float" and floats.spec.layout == {"onnx": "NCHW", "tflite": "NHWC"}[fmt]
    with engines.load(floats.backbone) as engine:
        assert engine.input.dtype == "float32"
        from_floats = engine.run(floats.spec.normalize(frames))
    np.testing.assert_allclose(from_frames, from_floats, atol=1e-4 * float(np.abs(from_floats).max()))


def test_a_broken_export_fails_parity_and_writes_nothing(run_dir, monkeypatch):
    """An exporter that drifts from PyTorch (here: a conv weight changed in the written file) is an error."""
    from edgetl import export as export_module

    real = export_module.write_artifact

    def drifting(module, spec, path, fmt, *, output_name):
        real(module, spec, path, fmt, output_name=output_name)
        model = onnx.load(str(path))
        init = next(i for i in model.graph.initializer if len(i.dims) == 4)
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(export_module, "write_artifact", drifting)
    with pytest.raises(parity.ParityError, match="does not match PyTorch"):
        export(run_dir, "onnx")
    assert not (run_dir / "export" / "onnx").exists()


def test_graph_that_differs_when_exported_is_caught(run_dir):
    """A model whose forward takes another path under torch.export (data-dependent code frozen at trace)."""
    run = load_run(run_dir)

    class Branchy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x)
            return y * 0.5 if torch.compiler.is_exporting() else y

    run.backbone = Branchy(run.backbone).eval()
    with pytest.raises(parity.ParityError):
        export(run_dir, "onnx", run=run, taps="none")


def test_cli_export_and_bad_format(run_dir, capsys):
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    assert "backbone.onnx" in capsys.readouterr().out
    assert main(["export", str(run_dir), "--format", "coreml"]) == 2
    assert "unknown format 'coreml'" in capsys.readouterr().err


def test_export_of_a_non_run_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a complete edgetl run" in err and "Traceback" not in err


def test_head_npz_is_the_run_head(run_dir):
    result = export(run_dir, "onnx")
    a, b = np.load(run_dir / "head.npz"), np.load(result.path / "head.npz")
    assert np.array_equal(a["W"], b["W"]) and np.array_equal(a["b"], b["b"])


def _taps_are_outputs_and_parity_covers_each(run_dir, result, fmt):
    """auto taps every stage whose output is a feature map; each pooled tap follows the embedding in the
    one output, and the parity check holds every segment to the tolerance on its own range."""
    import torch

    from edgetl.export import tapped

    run = load_run(run_dir)
    names = [s.name for s in result.spec.outputs]
    assert names[0] == "embedding" and len(names) > 2 and set(names[1:]) <= set(run.backbone.body_stages())
    assert set(result.record.parity["segments"]) == set(names)
    assert all(v <= 1e-3 for v in result.record.parity["segments"].values())
    with engines.load(result.backbone) as engine:
        assert engine.output.shape[-1] == sum(s.dim for s in result.spec.outputs)
        frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        out = engine.run(result.spec.model_input(frames))
    x = result.spec.normalize(frames)
    nchw = x if result.spec.layout == "NCHW" else x.transpose(0, 3, 1, 2).copy()
    ref = tapped(run, result.spec)(torch.from_numpy(nchw))
    np.testing.assert_allclose(out, ref.detach().numpy(), atol=1e-3 * float(np.abs(out).max()))
    stats = np.load(result.path / "features.npz")
    assert stats["mean"].shape == stats["std"].shape == (out.shape[1],) and int(stats["images"]) > 0


def test_taps_none_and_named_stages(run_dir):
    run = load_run(run_dir)
    plain = export(run_dir, "onnx", taps="none")
    assert plain.spec.outputs == () and engines.load(plain.backbone).output.shape[-1] == run.head.in_features
    stages = run.backbone.body_stages()
    named = export(run_dir, "onnx", taps=f"{stages[2]},{stages[1]}")
    assert [s.name for s in named.spec.outputs] == ["embedding", stages[1], stages[2]]  # in the network's order


def test_an_unknown_input_is_refused_before_any_work(run_dir, capsys):
    assert main(["export", str(run_dir), "--input", "rgb"]) == 2
    err = capsys.readouterr().err
    assert "unknown --input 'rgb'" in err and "uint8 (default" in err and "Traceback" not in err
    assert not (run_dir / "export" / "onnx").exists()


def test_an_unknown_tap_is_refused_before_any_work(run_dir, capsys):
    assert main(["export", str(run_dir), "--taps", "blocks.99"]) == 2
    err = capsys.readouterr().err
    assert "blocks.99 is not a stage" in err and "auto, none, or stages of" in err
    assert not (run_dir / "export" / "onnx").exists()
