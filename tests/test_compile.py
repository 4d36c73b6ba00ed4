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


def test_checkset_per_class_is_a_compile_option_recorded_in_the_manifest(compiled_run, tmp_path, capsys):
    import json

    from edgetl.cli import main

    assert main(["compile", str(compiled_run), "--target", "host-cpu", "--out", str(tmp_path / "two"),
                 "--checkset-per-class", "2"]) == 0
    m = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert m["checkset"]["images"] == 8 and m["checkset"]["per_class"] == 2 and m["checkset"]["capped_at"] is None
    assert "checkset: 8 images (2 per class asked)" in capsys.readouterr().err
    # the default asks enough for 100 images (25 of each of 4 classes); the run's test split holds 6 of each
    assert main(["compile", str(compiled_run), "--target", "host-cpu", "--out", str(tmp_path / "default")]) == 0
    m = json.loads((tmp_path / "default" / "manifest.json").read_text())
    assert m["checkset"]["images"] == 24 and m["checkset"]["per_class"] == 25
    assert "all the held-out images there are of 100 asked for" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "-3"])
def test_a_checkset_per_class_below_one_is_refused_before_any_work(compiled_run, tmp_path, capsys, bad):
    from edgetl.cli import main

    assert main(["compile", str(compiled_run), "--target", "host-cpu", "--out", str(tmp_path / "b"),
                 "--checkset-per-class", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--checkset-per-class must be a whole number >= 1" in err
    assert not (tmp_path / "b").exists()


def test_the_size_cap_says_when_it_cuts_the_checkset(compiled_run, tmp_path, monkeypatch):
    from edgetl import checkset

    monkeypatch.setattr(checkset, "MAX_MB", 3 * 32 * 32 * 3 / 2**20)  # three images' pixels: at least one a class
    entry = checkset.build(compiled_run, tmp_path / "c.npz", per_class=6)
    assert entry.images == 4 and entry.capped_at == 4 and entry.per_class == 6


def test_a_manifest_checkset_entry_from_before_the_new_keys_still_reads():
    from edgetl.runtime.manifest import Checkset

    old = Checkset.from_dict({"file": "checkset.npz", "images": 16, "from": "run test split"})
    assert old.per_class == 0 and old.capped_at is None
