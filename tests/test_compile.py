"""`edgetl compile --dry-run` promises to write nothing: the run dir stays byte-identical and torch
is never imported, also when the target's choice is the fp32 export."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_bad_inputs import tree

DRY_RUN = ("import sys\nfrom edgetl.cli import main\n"
           "code = main(['compile', sys.argv[1], '--target', sys.argv[2], '--dry-run'])\n"
           "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code)")


def _dry_run(run, target: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRY_RUN, str(run), target], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("target", ["host-cpu", "rpi4", "jetson-orin-nano"])
def test_a_dry_run_leaves_the_run_byte_identical_and_imports_no_torch(compiled_run, target):
    before = tree(compiled_run)
    done = _dry_run(compiled_run, target)
    assert done.stdout.split()[-2:] == ["NO-TORCH", "0"], done.stderr
    assert tree(compiled_run) == before


def test_a_dry_run_of_a_run_never_exported_says_how_and_exports_nothing(run_dir):
    before = tree(run_dir)
    done = _dry_run(run_dir, "host-cpu")
    assert done.stdout.split()[-2:] == ["NO-TORCH", "2"], done.stderr
    assert "has no onnx export yet" in done.stderr and f"edgetl export {run_dir} --format onnx" in done.stderr
    assert tree(run_dir) == before


def test_a_dry_run_on_a_model_file_edgetl_did_not_train_imports_no_torch(compiled_run, tmp_path):
    import shutil

    model = Path(shutil.copyfile(compiled_run / "export" / "onnx" / "backbone.onnx", tmp_path / "theirs.onnx"))
    before = tree(tmp_path)
    done = _dry_run(model, "host-cpu")
    assert done.stdout.split()[-2:] == ["NO-TORCH", "0"], done.stderr
    assert tree(tmp_path) == before
