import numpy as np
import pytest
import torch

from edgetl.runtime.preprocess import PreprocessSpec
from edgetl.train.features import nchw, to_input


@pytest.mark.parametrize("hw", [(24, 24), (20, 28)], ids=["spec size", "other size"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_numpy_and_torch_normalisation_agree(layout, hw):
    spec = PreprocessSpec(size=(24, 24), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), layout=layout)
    images = np.random.default_rng(0).integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    on_device = spec.normalize(images)
    in_training = to_input(nchw(images), spec).numpy()  # NCHW
    if layout == "NHWC":
        in_training = in_training.transpose(0, 2, 3, 1)
    assert on_device.dtype == np.float32 and on_device.flags.c_contiguous  # what the engine is handed
    assert on_device.shape == in_training.shape
    assert np.abs(on_device - in_training).max() <= 1e-5


def test_spec_round_trips_through_json():
    spec = PreprocessSpec(size=(96, 96), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="crop")
    assert PreprocessSpec.from_json(spec.to_json()) == spec


def test_unknown_schema_is_refused():
    text = PreprocessSpec(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1)).to_json()
    text = text.replace('"schema_version": 1', '"schema_version": 9')
    with pytest.raises(ValueError, match="schema_version"):
        PreprocessSpec.from_json(text)


def test_runtime_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys; import edgetl.runtime, edgetl.runtime.preprocess, edgetl.runtime.verify, "
            "edgetl.runtime.engines.tensorrt; "
            "print(','.join(m for m in ('torch', 'torchvision', 'onnx', 'PIL', 'edgetl.train', 'edgetl.backends', "
            "'cryptography') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert torch  # the host side has it; the runtime must not pull it in


def test_a_bgr_model_gets_the_channels_reversed_with_their_own_mean_and_std():
    rgb = PreprocessSpec(size=(8, 8), mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4))
    bgr = PreprocessSpec(size=(8, 8), mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4), channel_order="BGR")
    images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)  # decoded: RGB
    assert np.allclose(bgr.normalize(images), rgb.normalize(images)[:, ::-1], atol=1e-6)


@pytest.mark.parametrize("field, value, named", [("size", [4, 4], "size"), ("std", [1, 0, 1], "std"),
                                                 ("interpolation", "lanczos9", "interpolation"),
                                                 ("dtype", "int8", "input_scale")])
def test_a_spec_that_no_stage_could_use_is_refused_naming_the_field(field, value, named):
    raw = PreprocessSpec(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1)).to_dict() | {field: value}
    with pytest.raises(ValueError, match=named):
        PreprocessSpec.from_dict(raw, "preprocess.json")


def test_the_spec_s_interpolation_is_the_one_the_decoder_resizes_with():
    from edgetl.runtime.images import as_batch

    frame = np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    bilinear, nearest = (as_batch(frame, (16, 16), "stretch", mode) for mode in ("bilinear", "nearest"))
    assert bilinear.shape == nearest.shape == (1, 16, 16, 3) and not np.array_equal(bilinear, nearest)
    assert set(np.unique(nearest)) <= set(np.unique(frame))  # nearest only picks existing pixels


def test_training_and_the_device_agree_on_a_bgr_model_too():
    spec = PreprocessSpec(size=(8, 8), mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4), channel_order="BGR")
    images = np.random.default_rng(3).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert np.abs(spec.normalize(images) - to_input(nchw(images), spec).numpy()).max() <= 1e-5
