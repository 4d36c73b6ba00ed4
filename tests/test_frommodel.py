"""`edgetl bundle from-model`: feature extractors edgetl did not train (TFLite and ONNX, made here from
small torch nets by litert-torch and torch.onnx), bundled, verified, predicted and adapted as the
device does it; and the inputs it refuses, each in one line."""

from __future__ import annotations

import json
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import torch
from torch import nn

from edgetl.cli import main
from edgetl.errors import ConfigError
from edgetl.frommodel import Preprocess, from_model
from edgetl.runtime.cli import main as device
from edgetl.runtime.images import labelled_folder
from edgetl.runtime.model import Model
from edgetl.runtime.verify import open_bundle

SIZE = 32


class Extractor(nn.Module):
    """conv -> conv -> global average (kept 1x1, as many zoo models leave it) [-> classifier]."""

    def __init__(self, classes: int = 0, pool: bool = True):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.Conv2d(12, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24, classes) if classes else None
        self.pool = pool

    def features(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return x.mean((2, 3), keepdim=True) if self.pool else x

    def forward(self, x):
        x = self.features(x)
        return self.fc(torch.flatten(x, 1)) if self.fc is not None else x


def _metadata(mean: float, std: float) -> bytes:
    """A TFLite Support ModelMetadata flatbuffer ("M001") whose first input has NormalizationOptions."""
    b = flatbuffers.Builder(0)

    def floats(values):
        b.StartVector(4, len(values), 4)
        for v in reversed(values):
            b.PrependFloat32(v)
        return b.EndVector()

    def one(offset):
        b.StartVector(4, 1, 4)
        b.PrependUOffsetTRelative(offset)
        return b.EndVector()

    m, s = floats([mean]), floats([std])
    b.StartObject(2)  # NormalizationOptions: mean, std
    b.PrependUOffsetTRelativeSlot(0, m, 0)
    b.PrependUOffsetTRelativeSlot(1, s, 0)
    norm = b.EndObject()
    b.StartObject(2)  # ProcessUnit: options_type, options
    b.PrependUint8Slot(0, 1, 0)
    b.PrependUOffsetTRelativeSlot(1, norm, 0)
    units = one(b.EndObject())
    b.StartObject(5)  # TensorMetadata: ..., process_units (field 4)
    b.PrependUOffsetTRelativeSlot(4, units, 0)
    tensors = one(b.EndObject())
    b.StartObject(3)  # SubGraphMetadata: ..., input_tensor_metadata (field 2)
    b.PrependUOffsetTRelativeSlot(2, tensors, 0)
    subgraphs = one(b.EndObject())
    b.StartObject(4)  # ModelMetadata: ..., subgraph_metadata (field 3)
    b.PrependUOffsetTRelativeSlot(3, subgraphs, 0)
    b.Finish(b.EndObject(), file_identifier=b"M001")
    return bytes(b.Output())


def _with_metadata(src: Path, dst: Path, data: bytes) -> Path:
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(src))
    buffer = fb.BufferT()
    buffer.data = list(data)
    model.buffers.append(buffer)
    entry = fb.MetadataT()
    entry.name, entry.buffer = "TFLITE_METADATA", len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    flatbuffer_utils.write_model(model, str(dst))
    return dst


def _onnx(module: nn.Module, path: Path, shape=(1, 3, SIZE, SIZE), inputs=1) -> Path:
    sample = tuple(torch.zeros(shape) for _ in range(inputs))
    torch.onnx.export(module.eval(), sample, str(path), dynamo=True, verbose=False)
    return path


class TwoInputs(nn.Module):
    def forward(self, x, y):
        return (x + y).mean((2, 3))


@pytest.fixture(scope="module")
def zoo(signs, tmp_path_factory) -> dict[str, Path]:
    """Third-party-style extractors: fp32, int8 (int8 IO), uint8 IO (Coral's kind), fp32 with metadata
    (TF Hub's kind), ONNX feature extractor, ONNX classifier, and bad ones."""
    from edgetl.backends.tflite_io import to_uint8
    from edgetl.export.tflite import channels_last, to_tflite
    from edgetl.quantize import tflite as quantize_tflite

    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    net = Extractor().eval()
    out = {"fp32": root / "fp32.tflite", "int8": root / "int8.tflite"}
    to_tflite(channels_last(net), torch.zeros(1, SIZE, SIZE, 3), out["fp32"])
    paths, _ = labelled_folder(signs["train"])
    from edgetl.runtime.images import read_files

    pixels = read_files(paths[:24], (SIZE, SIZE))[0]
    quantize_tflite.quantize(net, out["int8"], pixels.astype(np.float32) / 255.0, "minmax")
    to_uint8(out["int8"], root / "coral_uint8.tflite")
    out["uint8"] = root / "coral_uint8.tflite"
    out["meta"] = _with_metadata(out["fp32"], root / "hub_fp32.tflite", _metadata(0.0, 255.0))
    out["onnx"] = _onnx(net, root / "extractor.onnx")
    torch.manual_seed(1)
    out["classifier"] = _onnx(Extractor(classes=5), root / "classifier.onnx")
    out["featuremap"] = _onnx(Extractor(pool=False), root / "featuremap.onnx")
    out["two_inputs"] = _onnx(TwoInputs(), root / "two_inputs.onnx", inputs=2)
    out["not_image"] = _onnx(nn.Linear(16, 8), root / "vector.onnx", shape=(1, 16))
    out["net"] = net
    return out


def _top1(bundle: Path, data: Path) -> tuple[float, list[str]]:
    paths, labels = labelled_folder(data)
    with Model.load(bundle, machine="any") as model:
        predicted = [p.label for p in model.predict(paths)]
    return 100.0 * float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)])), predicted


def _refused(capsys, argv, *words) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


# --- bundled, verified, predicted, adapted -------------------------------------------------------

def test_a_tflite_extractor_is_bundled_empty_then_adapted_on_the_device(zoo, signs, tmp_path, capsys):
    out = tmp_path / "fp32"
    assert main(["bundle", "from-model", str(zoo["fp32"]), "--target", "host-cpu", "--out", str(out),
                 "--preprocess", "mean=0,std=255"]) == 0
    assert main(["bundle", "verify", str(out)]) == 0 and main(["bundle", "verify", f"{out}.tar.gz"]) == 0
    m = open_bundle(out).manifest
    assert m.labels == () and m.engine == "litert" and m.outputs[0].shape == (1, 24)  # (1, 24, 1, 1) squeezed
    assert m.source_run.name == "fp32.tflite" and m.source_run.id.startswith("sha256:") and len(m.source_run.id) == 71
    assert m.preprocess.size == (SIZE, SIZE) and m.preprocess.std == (1.0, 1.0, 1.0)  # pixel units -> 0..1 units
    capsys.readouterr()
    image = str(next(signs["test"].rglob("*.png")))
    _refused(capsys, ["predict", str(out), image], "no classes yet: run adapt")

    assert device(["adapt", str(out), "--data", str(signs["train"])]) == 0  # the device's own command
    assert "committed" in capsys.readouterr().out
    top1, device_labels = _top1(out, signs["test"])
    assert top1 >= 50.0  # 4 classes: chance is 25%

    # a head fitted on the host from the same images is the device's head, prediction for prediction
    fitted = tmp_path / "fitted"
    assert main(["bundle", "from-model", str(zoo["fp32"]), "--target", "host-cpu", "--out", str(fitted),
                 "--preprocess", "mean=0,std=255", "--data", str(signs["train"])]) == 0
    fm = open_bundle(fitted).manifest
    assert len(fm.labels) == 4 and fm.checkset is not None and fm.accuracy is not None and fm.features
    assert _top1(fitted, signs["test"])[1] == device_labels


def test_int8_io_needs_its_normalisation_and_runs_for_a_pi(zoo, signs, tmp_path, capsys):
    _refused(capsys, ["bundle", "from-model", str(zoo["int8"]), "--target", "rpi4", "--out", str(tmp_path / "x")],
             "int8", "--preprocess size=224,mean=127.5,std=127.5")
    assert not (tmp_path / "x").exists()
    r = from_model(zoo["int8"], "rpi4", tmp_path / "int8", preprocess="mean=0,std=255")
    spec = r.manifest.preprocess
    assert r.manifest.precision == "int8" and spec.dtype == "int8" and spec.input_scale and not spec.pixels
    assert device(["adapt", str(tmp_path / "int8"), "--data", str(signs["train"]), "--any-arch"]) == 0
    assert _top1(tmp_path / "int8", signs["test"])[0] >= 50.0


def test_a_coral_style_uint8_input_needs_no_preprocess(zoo, signs, tmp_path):
    """uint8 input quantized (1/255, 0): its quantization is the normalisation; the frame goes in as it is."""
    r = from_model(zoo["uint8"], "host-cpu", tmp_path / "coral", data=signs["train"])
    spec = r.manifest.preprocess
    assert spec.pixels and spec.input_scale == pytest.approx(1 / 255, rel=1e-3) and spec.input_zero_point == 0
    assert "quantization" in r.preprocess_from
    # the same features as the int8 model fed the normalised image: the bundles predict alike
    int8 = from_model(zoo["int8"], "host-cpu", tmp_path / "int8", preprocess="mean=0,std=255", data=signs["train"])
    assert int8.manifest.labels == r.manifest.labels
    assert _top1(tmp_path / "coral", signs["test"])[1] == _top1(tmp_path / "int8", signs["test"])[1]


def test_tflite_metadata_gives_the_normalisation(zoo, signs, tmp_path):
    meta = from_model(zoo["meta"], "host-cpu", tmp_path / "meta")
    given = from_model(zoo["fp32"], "host-cpu", tmp_path / "given", preprocess="size=32,mean=0,std=255")
    assert meta.preprocess_from == "the model's TFLite metadata"
    assert meta.manifest.preprocess == given.manifest.preprocess
    paths, _ = labelled_folder(signs["test"])
    with Model.load(tmp_path / "meta") as a, Model.load(tmp_path / "given") as b:
        assert np.array_equal(a.embed(paths[:8]), b.embed(paths[:8]))


def test_onnx_extractor_and_a_classifier_cut_at_a_named_tensor(zoo, signs, tmp_path, capsys):
    import onnx

    r = from_model(zoo["onnx"], "host-cpu", tmp_path / "onnx", preprocess="mean=0,std=255")
    assert r.manifest.engine == "onnxruntime" and r.cut.squeezed and r.manifest.outputs[0].shape[-1] == 24
    assert device(["adapt", str(tmp_path / "onnx"), "--data", str(signs["train"])]) == 0
    capsys.readouterr()

    graph = onnx.load(str(zoo["classifier"])).graph
    pooled = next(n.output[0] for n in graph.node if n.op_type == "ReduceMean")  # what Netron would show
    out = tmp_path / "cut"
    assert main(["bundle", "from-model", str(zoo["classifier"]), "--target", "host-cpu", "--out", str(out),
                 "--preprocess", "size=32,mean=0,std=255", "--output", pooled]) == 0
    m = open_bundle(out).manifest
    assert m.outputs[0].shape[-1] == 24 and pooled in m.source_run.backbone
    cut = onnx.load(str(out / m.model)).graph
    assert not any(n.op_type == "Gemm" for n in cut.node) and not any(i.dims == [5, 24] for i in cut.initializer)
    paths, _ = labelled_folder(signs["test"])
    with Model.load(out) as model:
        features = model.embed(paths[:4])
        x = torch.from_numpy(model.pixels(paths[:4]).astype(np.float32).transpose(0, 3, 1, 2) / 255.0)
    torch.manual_seed(1)
    reference = torch.flatten(Extractor(classes=5).eval().features(x), 1).detach().numpy()
    assert np.allclose(features, reference, atol=1e-4)
    assert device(["adapt", str(out), "--data", str(signs["train"])]) == 0


def test_a_tflite_classifier_cut_drops_the_layers_after_it(zoo, tmp_path):
    from edgetl.backends import tflite_graph

    ops = tflite_graph.read(zoo["fp32"]).ops
    inner = next(op.outputs[0].name for op in ops if op.op == "MEAN")
    r = from_model(zoo["fp32"], "host-cpu", tmp_path / "cut", preprocess="mean=0,std=255", output=inner)
    kept = tflite_graph.read(tmp_path / "cut" / r.manifest.model)
    # the MEAN's (1, 24) is the embedding: the RESHAPE the converter put after it is dropped
    assert [op.op for op in kept.ops] == [op.op for op in ops][: len(kept.ops)] and kept.ops[-1].op == "MEAN"
    assert len(kept.ops) < len(ops) and kept.outputs[0].shape == (1, 24)


# --- refused, in one line, before anything is written ---------------------------------------------

def test_a_feature_map_output_is_refused_with_the_output_hint(zoo, tmp_path, capsys):
    _refused(capsys, ["bundle", "from-model", str(zoo["featuremap"]), "--target", "host-cpu", "--out",
                      str(tmp_path / "b"), "--preprocess", "mean=0,std=255"], "not an embedding", "--output")
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.tar.gz").exists()


def test_a_missing_preprocessing_spec_is_refused(zoo, tmp_path, capsys):
    _refused(capsys, ["bundle", "from-model", str(zoo["fp32"]), "--target", "host-cpu", "--out", str(tmp_path / "b")],
             "normalisation", "--preprocess size=224,mean=127.5,std=127.5")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("case, extra, words", [
    ("unknown_tensor", ["--output", "conv_b"], ["no tensor of that name", "close names"]),
    ("two_inputs", [], ["2 inputs"]),
    ("not_image", [], ["not an RGB image"]),
    ("coral_onnx", [], ["coral-usb runs .tflite", "host-cpu"]),
    ("text_file", [], ["not a valid TFLite model"]),
    ("truncated", [], ["not a valid ONNX model"]),
    ("suffix", [], ["not a model file"]),
    ("bad_preprocess", ["--preprocess", "mean=0,std=255,gamma=2"], ["unknown key 'gamma'"]),
    ("unit_std", ["--preprocess", "mean=0.485,0.456,0.406,std=0.229,0.224,0.225"], ["pixel units"]),
    ("size_mismatch", ["--preprocess", "size=64,mean=0,std=255"], ["takes 32x32"]),
])
def test_bad_input_is_one_line(zoo, tmp_path, capsys, case, extra, words):
    model, target = zoo["onnx"], "host-cpu"
    if case in ("two_inputs", "not_image"):
        model = zoo[case]
    elif case == "coral_onnx":
        target = "coral-usb"
    elif case == "text_file":
        model = tmp_path / "notes.tflite"
        model.write_text("not a model\n")
    elif case == "truncated":
        model = tmp_path / "cut.onnx"
        model.write_bytes(zoo["onnx"].read_bytes()[:200])
    elif case == "suffix":
        model = tmp_path / "model.pt"
        model.write_bytes(b"x")
    if case == "unknown_tensor":
        extra = [*extra, "--preprocess", "mean=0,std=255"]
    out = tmp_path / "b"
    _refused(capsys, ["bundle", "from-model", str(model), "--target", target, "--out", str(out), *extra], *words)
    assert not out.exists() and not (tmp_path / "b.tar.gz").exists()


def test_preprocess_takes_per_channel_lists_in_pixel_units():
    p = Preprocess.parse("size=224,mean=123.675,116.28,103.53,std=58.395/57.12/57.375,resize=crop,bgr")
    assert p.size == (224, 224) and p.mean == (123.675, 116.28, 103.53) and p.std[1] == 57.12
    assert p.resize == "crop" and p.order == "BGR"
    assert Preprocess.parse("size=192x256,mean=127.5,std=127.5").size == (192, 256)
    with pytest.raises(ConfigError, match="mean and std together"):
        Preprocess.parse("mean=127.5")


def test_an_empty_bundle_says_so_and_a_second_build_is_the_same_bytes(zoo, tmp_path):
    a = from_model(zoo["onnx"], "host-cpu", tmp_path / "a", preprocess="mean=0,std=255").manifest
    b = from_model(zoo["onnx"], "host-cpu", tmp_path / "b" / "a", preprocess="mean=0,std=255").manifest
    assert a.to_bytes() == b.to_bytes()
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b" / "a.tar.gz").read_bytes()
    with Model.load(tmp_path / "a") as model, pytest.raises(ConfigError, match="no classes yet: run adapt"):
        model.predict(np.zeros((SIZE, SIZE, 3), np.uint8))
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["labels"] == []
