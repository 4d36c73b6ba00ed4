import numpy as np

from edgetl.export import export
from edgetl.quantize import calibration, ort
from edgetl.train.run import load_run


def _ranges(cache):
    from onnxruntime.quantization.calibrate import load_tensors_data

    return {name: tuple(float(v) for v in np.ravel(t.range_value)) for name, t in load_tensors_data(cache).items()}


def test_entropy_calibration_really_searches_a_clip_threshold(run_dir, calib_file, tmp_path):
    run = load_run(run_dir)
    exported = export(run_dir, "onnx", run=run, taps="none")  # the calibrator, not the taps: half the tensors
    x = exported.spec.model_input(calibration.images(calibration.select(calibration.read(calib_file)), run.spec))
    pre = ort.prepare(exported.backbone, tmp_path / "pre.onnx")
    minmax = _ranges(ort.calibrate(pre, x, "minmax", tmp_path / "minmax.json"))
    entropy = _ranges(ort.calibrate(pre, x, "entropy", tmp_path / "entropy.json"))
    widths = {n: (entropy[n][1] - entropy[n][0]) / (minmax[n][1] - minmax[n][0])
              for n in minmax if n in entropy and minmax[n][1] > minmax[n][0]}
    # onnxruntime's quantize_static default (128 bins for 128 levels) would give the full range everywhere
    assert len(widths) > 20 and sum(w < 0.9 for w in widths.values()) > len(widths) // 4
