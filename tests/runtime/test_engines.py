import numpy as np
import pytest

from edgetl.errors import ConfigError
from edgetl.runtime import engines
from edgetl.runtime.engines import TensorSpec, dequantize, quantize


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
