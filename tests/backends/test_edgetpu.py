import json
import os
import stat
import sys
import textwrap

import pytest

from edgetl import targets
from edgetl.backends import Source, edgetpu
from edgetl.cli import main
from edgetl.compile import compatibility, compile_bundle
from edgetl.errors import ConfigError
from edgetl.runtime.verify import open_bundle

CORAL = targets.load("coral-usb")


def test_an_unsupported_op_in_the_middle_is_named_with_the_split(zoo):
    report = edgetpu.static_report(zoo["split"], CORAL)
    first = report.first_unmapped
    assert first is not None and first.op == "LEAKY_RELU" and "not an Edge TPU op" in first.reason
    before = [op for op in report.ops if op.index < first.index]
    assert before and all(op.mapped for op in before) and {op.op for op in before} == {"CONV_2D"}
    # the compiler maps up to the first unsupported op: everything from there runs on the CPU
    assert report.cpu_ops[0] == first.name and len(report.cpu_ops) == len(report.ops) - len(before)
    assert any(op.op == "CONV_2D" and not op.mapped and "after the split" in op.reason for op in report.ops)


def test_the_same_net_without_it_maps_fully(zoo):
    report = edgetpu.static_report(zoo["clean"], CORAL)
    assert report.fully_mapped and report.cpu_ops == () and report.first_unmapped is None


def test_dry_run_json_on_a_model_edgetl_did_not_train(zoo, capsys):
    assert main(["compile", str(zoo["split"]), "--target", "coral-usb", "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["first_unmapped"].startswith("LEAKY_RELU#")
    assert report["cpu_ops"][0] == report["first_unmapped"]
    assert {"name", "verdict", "reason"} <= set(report["ops"][0]) and report["ops"][0]["verdict"] == "mapped"


def test_float_int16_dynamic_and_high_rank_tensors_are_refused():
    from edgetl.backends.tflite_graph import Op, Tensor

    def op(*tensors, name="ADD"):
        return Op(0, name, 1, tensors, (Tensor(9, "out", "int8", (1, 4, 4, 8), False, False),))

    ok = Tensor(1, "x", "int8", (1, 4, 4, 8), False, False)
    assert edgetpu.verdict(op(ok, ok)) is None
    assert "float32" in edgetpu.verdict(op(Tensor(1, "x", "float32", (1, 4, 4, 8), False, False)))
    assert "dynamic shape" in edgetpu.verdict(op(Tensor(1, "x", "int8", (1, 4, 4, 8), True, False)))
    assert "3 innermost" in edgetpu.verdict(op(Tensor(1, "x", "int8", (2, 4, 4, 8), False, False)))
    assert "version 9" in edgetpu.verdict(Op(0, "CONV_2D", 9, (ok,), (ok,)))
    fused = Op(0, "MAX_POOL_2D", 1, (ok,), (ok,), fused_activation="RELU")
    assert "fused RELU" in edgetpu.verdict(fused)


def test_without_the_compiler_compile_stops_unless_cpu_only_is_allowed(compiled_run, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ConfigError, match="edgetpu_compiler is not on PATH") as info:
        compile_bundle(compiled_run, "coral-usb", tmp_path / "coral")
    assert "--allow-cpu-only" in info.value.hint and not (tmp_path / "coral").exists()
    manifest = compile_bundle(compiled_run, "coral-usb", tmp_path / "coral", allow_cpu_only=True)
    assert manifest["engine"] == "litert" and manifest["precision"] == "int8"
    assert manifest["inputs"][0]["dtype"] == "uint8"  # the target asks uint8 IO
    assert open_bundle(tmp_path / "coral", machine="x86_64").model.suffix == ".tflite"


FAKE_LOG = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 12 ms.

Input model: {model}
Output model: {out}
Number of Edge TPU subgraphs: 1
Total number of operations: {total}

Number of operations that will run on Edge TPU: {tpu}
Number of operations that will run on CPU: {cpu}

Operator                       Count      Status

{rows}
"""


def _fake_compiler(bin_dir, rows, tpu, cpu):
    """A recording fake of edgetpu_compiler (the real one is not here): logs its argv, copies the
    model to OUT/<stem>_edgetpu.tflite and prints a log in the real compiler's layout."""
    bin_dir.mkdir()
    script = bin_dir / "edgetpu_compiler"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        # FAKE edgetpu_compiler for tests: records its arguments, does not compile anything.
        import pathlib, shutil, sys
        args = sys.argv[1:]
        pathlib.Path({str(bin_dir / "argv")!r}).write_text(" ".join(args))
        out = pathlib.Path(args[args.index("--out_dir") + 1])
        model = pathlib.Path(args[-1])
        target = out / (model.stem + "_edgetpu.tflite")
        shutil.copyfile(model, target)
        print({FAKE_LOG!r}.format(model=model, out=target, total={tpu + cpu}, tpu={tpu}, cpu={cpu},
              rows={rows!r}))
        """))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_the_compiler_log_is_parsed_into_the_report(zoo, tmp_path):
    rows = "\n".join(["CONV_2D                        2          Mapped to Edge TPU",
                      "CONV_2D                        1          More than one subgraph is not supported",
                      "LEAKY_RELU                     1          Operation not supported",
                      "TRANSPOSE                      1          More than one subgraph is not supported",
                      "MEAN                           1          More than one subgraph is not supported"])
    text = FAKE_LOG.format(model="m", out="o", total=6, tpu=2, cpu=4, rows=rows)
    log = edgetpu.parse_log(text)
    assert log.version == "16.0.384591198" and (log.tpu_ops, log.cpu_ops) == (2, 4)
    report = edgetpu.compiler_report(zoo["split"], log, CORAL)
    assert report.source == "edgetpu_compiler" and report.first_unmapped.op == "LEAKY_RELU"
    assert report.first_unmapped.reason == "Operation not supported"
    assert [op.mapped for op in report.ops if op.op == "CONV_2D"] == [True, True, False]


def test_compile_runs_the_compiler_on_path_and_bundles_its_output(compiled_run, tmp_path, monkeypatch):
    rows = "CONV_2D                        20         Mapped to Edge TPU"
    _fake_compiler(tmp_path / "bin", rows, 20, 0)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    manifest = compile_bundle(compiled_run, "coral-devboard", tmp_path / "coral")
    argv = (tmp_path / "bin" / "argv").read_text().split()
    assert argv[0] == "--show_operations" and argv[-1].endswith(".tflite")
    assert manifest["engine"] == "edgetpu" and manifest["model"] == "backbone_edgetpu.tflite"
    assert manifest["compatibility"]["source"] == "edgetpu_compiler"
    assert "edgetpu_compiler.log" in manifest["files"]


def test_a_float_model_is_refused_for_the_edge_tpu(trained_run):
    with pytest.raises(ConfigError, match="coral-usb runs int8 only .* has no int8 tflite model"):
        compatibility(trained_run, "coral-usb")


def test_source_must_be_a_run_or_a_model_file(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="cannot compile"):
        Source.of(tmp_path / "notes.txt")
    with pytest.raises(ConfigError, match="not a run dir"):
        Source.of(tmp_path)


def test_a_model_file_of_the_wrong_format_for_the_target_is_named(zoo):
    with pytest.raises(ConfigError, match=r"jetson-orin-nano runs \.onnx models \(tensorrt\), and split.tflite"):
        compatibility(zoo["split"], "jetson-orin-nano")


def test_a_cpu_only_coral_bundle_loads_with_the_spec_of_its_uint8_model(compiled_run, monkeypatch, tmp_path, signs):
    from edgetl.data.imagefolder import scan
    from edgetl.runtime import Model

    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    manifest = compile_bundle(compiled_run, "coral-usb", tmp_path / "coral", allow_cpu_only=True)
    model_input = manifest.inputs[0]
    assert (manifest.preprocess.dtype, manifest.preprocess.input_zero_point) == ("uint8", model_input.zero_point)
    with Model.load(tmp_path / "coral", machine="any") as model:  # the spec agrees with the model it packs
        predictions = model.predict([p for p, _ in scan(signs["test"]).samples][:4])
    assert all(p.label in model.labels for p in predictions)
