import pytest

from edgetl.cli import main


@pytest.mark.parametrize("name, content, target, message", [
    ("text.onnx", b"this is not a model\n", "host-cpu", "is not a valid ONNX model"),
    ("empty.tflite", b"", "rpi4", "is not a valid TFLite model"),
    ("text.tflite", b"hello, world, not flatbuffers", "coral-usb", "is not a valid TFLite model"),
])
def test_a_file_that_is_not_a_model_is_one_line(tmp_path, capsys, name, content, target, message):
    path = tmp_path / name
    path.write_bytes(content)
    assert main(["compile", str(path), "--target", target, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{path} {message}" in err and "hint:" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("target", ["rpi4", "coral-usb"])
def test_a_truncated_tflite_is_one_line(compiled_run, tmp_path, capsys, target):
    whole = (compiled_run / "quantize" / "tflite" / "backbone_int8.tflite").read_bytes()
    path = tmp_path / "cut.tflite"
    path.write_bytes(whole[: len(whole) // 5])
    assert main(["compile", str(path), "--target", target, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{path} is not a valid TFLite model" in err and len(err.strip().splitlines()) == 1
