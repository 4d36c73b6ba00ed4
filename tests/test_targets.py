import pytest

from edgetl import targets
from edgetl.cli import main
from edgetl.errors import ConfigError

SHIPPED = ("host-cpu", "rpi4", "rpi5", "coral-usb", "coral-devboard", "jetson-nano", "jetson-orin-nano")
GOOD = """name = "board"
arch = "aarch64"
engines = ["litert"]
precisions = ["int8"]
io_dtype = "int8"
[budgets]
latency_p95_ms = 30
min_top1 = 80
max_rss_mb = 300
"""


def test_every_shipped_target_loads_with_budgets_and_a_known_engine():
    assert set(SHIPPED) <= set(targets.names())
    for name in SHIPPED:
        t = targets.load(name)
        assert t.budgets.latency_p95_ms > 0 and t.budgets.max_rss_mb > 0
        assert t.engine in targets.ENGINES and set(t.precisions) <= set(targets.PRECISIONS)
    assert targets.load("coral-usb").io_dtype == "uint8" and targets.load("coral-usb").constraints.full_integer
    assert "x86_64" in targets.load("host-cpu").arch


def test_budgets_merge_device_overrides():
    b = targets.load("rpi4").budgets.merged({"latency_p95_ms": 12})
    assert b.latency_p95_ms == 12.0 and b.max_rss_mb == targets.load("rpi4").budgets.max_rss_mb
    with pytest.raises(ConfigError, match="budgets.latency_p99_ms"):
        targets.load("rpi4").budgets.merged({"latency_p99_ms": 12})


@pytest.mark.parametrize("edit, message", [
    (('engines = ["litert"]', 'engines = ["tflite"]'), r"engines = \['tflite'\].*allowed: onnxruntime, litert"),
    (('arch = "aarch64"', 'arch = "arm64"'), "arch = .*allowed: x86_64, aarch64, armv7l"),
    (('io_dtype = "int8"', 'io_dtype = "int4"'), "io_dtype = 'int4'.*allowed: float32, int8, uint8"),
    (("max_rss_mb = 300", "max_rss = 300"), "budgets.max_rss = 300.*allowed: latency_p95_ms, max_rss_mb"),
    (("min_top1 = 80", 'min_top1 = "high"'), "budgets.min_top1 = 'high'.*a number"),
    (('name = "board"', 'name = "other"'), "name = 'other'.*the file's own name"),
    (('io_dtype = "int8"', 'io_dtype = "int8"\nspeed = 3'), "speed = 3.*allowed: arch, budgets"),
    (("max_rss_mb = 300\n", ""), r"\[budgets\] lacks max_rss_mb"),
    (('arch = "aarch64"', 'arch = '), "not valid TOML"),
    (('engines = ["litert"]\nprecisions = ["int8"]', 'engines = ["onnxruntime"]\nprecisions = ["fp16"]'),
     r"precisions = \['fp16'\] has none that engine 'onnxruntime' runs.*onnxruntime runs fp32, int8"),
    (('engines = ["litert"]\nprecisions = ["int8"]', 'engines = ["edgetpu"]\nprecisions = ["fp32"]'),
     r"precisions = \['fp32'\] has none that engine 'edgetpu' runs.*edgetpu runs int8"),
])
def test_a_bad_target_file_names_the_file_key_and_allowed_values(tmp_path, edit, message):
    file = tmp_path / "board.toml"
    file.write_text(GOOD.replace(*edit))
    with pytest.raises(ConfigError, match=message) as info:
        targets.load(file)
    assert str(file) in info.value.message


def test_targets_are_found_in_EDGETL_TARGETS(tmp_path, monkeypatch):
    (tmp_path / "board.toml").write_text(GOOD)
    monkeypatch.setenv("EDGETL_TARGETS", str(tmp_path))
    assert targets.load("board").engines == ("litert",)


def test_cli_lists_and_explains_targets_and_refuses_unknown_ones(capsys):
    assert main(["targets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in SHIPPED)
    assert main(["targets", "show", "coral-usb"]) == 0
    shown = capsys.readouterr().out
    assert "uint8" in shown and "2.6" in shown and "innermost" in shown
    assert main(["targets", "show", "rpi9"]) == 2
    err = capsys.readouterr().err
    assert "unknown target 'rpi9'" in err and "rpi4" in err and "Traceback" not in err
