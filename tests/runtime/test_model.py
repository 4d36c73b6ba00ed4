import gc
import json
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

from edgetl.compile import compile_bundle
from edgetl.data.imagefolder import scan
from edgetl.errors import ConfigError
from edgetl.runtime import Model
from edgetl.runtime.images import InputError
from edgetl.runtime.verify import BundleError


@pytest.fixture
def bundles(compiled_run, tmp_path):
    compile_bundle(compiled_run, "host-cpu", tmp_path / "host")
    compile_bundle(compiled_run, "rpi4", tmp_path / "rpi4")
    return {"host": tmp_path / "host", "rpi4": tmp_path / "rpi4"}


def _images(signs, n=6):
    return [p for p, _ in scan(signs["test"]).samples][:n]


def test_paths_pil_images_and_arrays_predict_alike(bundles, signs):
    model = Model.load(bundles["host"])
    paths = _images(signs)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    by_path = model.predict(paths, top_k=3)
    assert [p.label for p in by_path] == [p.label for p in model.predict([Image.open(p) for p in paths])]
    assert [p.label for p in by_path] == [p.label for p in model.predict(arrays)]
    assert all(p.label in model.labels and 0 < p.probability <= 1 and len(p.top) == 3 for p in by_path)
    features = model.embed(paths)  # the embedding, then the pooled taps
    assert features.shape == (len(paths), model.layout.width) and model.layout.names[0] == "embedding"
    assert model.layout.width > model.head.W.shape[1] == model.layout.dims(("embedding",))[0]


def test_int8_litert_bundle_matches_its_engine_run_once_dequantized(bundles, signs):
    model = Model.load(bundles["rpi4"], machine="any")
    # the frame goes in as it is (its graph normalises it); the output is dequantized once, in the engine's run
    assert model.engine.input.dtype == "uint8" and model.engine.output.dtype == "int8"
    pixels = model.pixels(_images(signs))
    raw = model.engine.invoke(pixels[:1])
    expected = (raw.astype(np.float32) - model.engine.output.zero_point) * model.engine.output.scale
    np.testing.assert_allclose(model.embed(pixels[:1]), expected, rtol=0, atol=1e-6)


def test_wrong_inputs_are_converted_or_refused_clearly(bundles):
    model = Model.load(bundles["host"])
    h, w = model.input_size
    big = np.zeros((h * 3, w * 2, 3), np.uint8)
    gray = np.zeros((h, w), np.uint8)
    rgba = np.zeros((h, w, 4), np.uint8)
    assert len(model.predict([big, gray, rgba])) == 3  # resized as training resized; gray and RGBA to RGB
    with pytest.raises(InputError, match="float32; the model takes uint8"):
        model.predict(np.zeros((h, w, 3), np.float32))
    with pytest.raises(InputError, match=r"shape \(2, 3, 8, 8, 3\)|shape \(3, 8, 8, 3\)"):
        model.predict([np.zeros((2, 3, 8, 8, 3), np.uint8)])
    with pytest.raises(InputError, match="cannot read image"):
        model.predict(["/nonexistent.png"])


def test_a_model_loaded_from_an_archive_leaves_no_unpacked_copy_behind(bundles, monkeypatch, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    model = Model.load(bundles["host"].with_name("host.tar.gz"))
    assert len(list(scratch.iterdir())) == 1 and model.predict(np.zeros((8, 8, 3), np.uint8))
    del model
    gc.collect()
    assert list(scratch.iterdir()) == []  # a device predicting from archives all day must not fill /tmp


def test_a_tampered_bundle_is_refused_before_the_engine_opens(bundles):
    model_file = bundles["host"] / json.loads((bundles["host"] / "manifest.json").read_text())["model"]
    model_file.write_bytes(model_file.read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError, match="does not match its sha256"):
        Model.load(bundles["host"])


def test_a_missing_engine_names_the_pip_extra(bundles, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"pip install 'edgetl\[runtime-ort\]'"):
        Model.load(bundles["host"])


def test_a_bundle_for_another_cpu_is_refused_on_load(bundles):
    with pytest.raises(BundleError, match="this machine is"):
        Model.load(bundles["rpi4"])


def test_device_cli_runs_where_torch_cannot_be_imported(bundles, signs):
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "
            "from edgetl.runtime.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]; raise SystemExit(rc)")
    paths = [str(p) for p in _images(signs, 2)]
    out = subprocess.run([sys.executable, "-c", code, "predict", str(bundles["host"]), *paths, "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["image"] for r in records] == paths and all("probability" in r for r in records)


def test_a_signed_bundle_runs_only_once_its_signature_is_checked(compiled_run, tmp_path, monkeypatch):
    from edgetl.pack import keygen

    key, pub = keygen(tmp_path / "fleet")
    compile_bundle(compiled_run, "host-cpu", tmp_path / "signed", sign=key)
    with pytest.raises(BundleError, match="is signed, and no public key"):
        Model.load(tmp_path / "signed")
    assert Model.load(tmp_path / "signed", key=pub).bundle.signature_checked
    monkeypatch.setenv("EDGETL_BUNDLE_KEY", str(pub))
    assert Model.load(tmp_path / "signed").bundle.signature_checked


def test_a_manifest_whose_spec_disagrees_with_its_model_input_is_refused(bundles):
    manifest_file = bundles["host"] / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["preprocess"] |= {"input": "float", "layout": "NCHW", "dtype": "int8", "input_scale": 0.02,
                               "input_zero_point": -3}
    manifest_file.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")  # unsigned: not hashed
    with pytest.raises(ConfigError, match="preprocessing spec says input int8 .* takes uint8"):
        Model.load(bundles["host"])


def test_a_closed_model_frees_its_engine_and_predicts_no_more(bundles, signs):
    with Model.load(bundles["host"]) as model:
        assert len(model.predict(_images(signs, 1))) == 1
    with pytest.raises(ConfigError, match="closed"):
        model.predict(_images(signs, 1))


def test_a_uint8_bundle_takes_the_frame_as_it_is_one_or_a_batch(bundles, signs):
    for name in ("host", "rpi4"):
        model = Model.load(bundles[name], machine="any")
        assert model.spec.input == "uint8" and model.engine.input.dtype == "uint8"  # the graph normalises
        pixels = model.pixels(_images(signs))
        one_by_one = [model.predict(p)[0] for p in pixels]
        batch = model.predict(pixels)  # an N x H x W x 3 uint8 array
        assert [p.label for p in batch] == [p.label for p in one_by_one]
        np.testing.assert_allclose([p.probability for p in batch], [p.probability for p in one_by_one], rtol=1e-5)
        h, w = model.input_size
        with pytest.raises(InputError, match="float64; the model takes uint8"):
            model.predict(np.zeros((h, w, 3)))
        big = np.asarray(Image.fromarray(pixels[0]).resize((w * 3, h * 2), Image.BILINEAR))
        assert model.predict(big)[0].label in model.labels  # another size: resized as training resized


def test_uint8_and_float_bundles_predict_alike(run_dir, signs, tmp_path):
    from edgetl.export import export

    export(run_dir, "onnx")
    compile_bundle(run_dir, "host-cpu", tmp_path / "uint8")
    export(run_dir, "onnx", input="float")
    compile_bundle(run_dir, "host-cpu", tmp_path / "float")
    uint8, floats = Model.load(tmp_path / "uint8"), Model.load(tmp_path / "float")
    assert (uint8.engine.input.dtype, floats.engine.input.dtype) == ("uint8", "float32")
    assert floats.engine.input.shape[1] == 3  # float keeps NCHW for onnx
    images = _images(signs, 24)
    np.testing.assert_allclose(uint8.embed(images), floats.embed(images), rtol=1e-4, atol=1e-5)
    assert [p.label for p in uint8.predict(images)] == [p.label for p in floats.predict(images)]


def test_stream_yields_each_frame_as_it_arrives_and_passes_a_camera_error_through(bundles, signs):
    model = Model.load(bundles["host"])
    pixels = model.pixels(_images(signs, 4))
    taken = []

    def camera():
        for frame in pixels[:3]:
            taken.append(len(taken))
            yield frame
        raise OSError("camera unplugged")

    stream = model.stream(camera())
    first = next(stream)
    assert taken == [0]  # a prediction per frame as it comes, not after the whole generator
    rest = []
    with pytest.raises(OSError, match="camera unplugged"):
        for p in stream:
            rest.append(p)
    assert [p.label for p in [first, *rest]] == [p.label for p in model.predict(pixels[:3])]
    assert model.predict(pixels[3])  # the model goes on after
    bad = model.stream(iter([pixels[0], np.zeros((8, 8, 3), np.float32)]))
    assert next(bad).label in model.labels
    with pytest.raises(InputError, match="frame 1: .*float32"):
        next(bad)
    with pytest.raises(ConfigError, match="frame 0 is 2 images"):
        next(model.stream([pixels[:2]]))
