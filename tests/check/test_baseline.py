"""`edgetl check --baseline`: a check held against an earlier one of the same bundle on the same
device, on this machine as the device: what a CI job gating on regressions sees."""

import hashlib
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from edgetl.check.baseline import Comparison
from edgetl.cli import main
from edgetl.compile import compile_bundle

pytestmark = pytest.mark.hil
LOOSE = "[budgets]\nlatency_p95_ms = 1000\nmin_top1 = 0\nmax_rss_mb = 8000\n"


def _local(folder: Path, name: str = "bench") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.toml").write_text(f'name = "{name}"\ntarget = "host-cpu"\ntransport = "local"\n'
                                         f'[local]\nworkdir = "../{name}-board"\n{LOOSE}')
    return folder / f"{name}.toml"


def _check(bundle: Path, device: Path, out: Path, *extra: str) -> int:
    return main(["check", str(bundle), "--device", str(device), "--runs", "200", "--warmup", "10",
                 "--report", str(out / "report"), "--junit", str(out / "junit.xml"), *extra])


def _verdicts(out: Path) -> dict:
    (r,) = json.loads((out / "report" / "report.json").read_text())["results"]
    return {v["budget"]: v for v in r["verdicts"]}


@pytest.fixture(scope="module")
def signs_bundle(quantized_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("baseline") / "signs"
    compile_bundle(quantized_run, "host-cpu", out)
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    return _local(tmp_path_factory.mktemp("fleet") / "devices")


@pytest.fixture(scope="module")
def earlier(signs_bundle, fleet, tmp_path_factory) -> Path:
    """A first check of the bundle: the baseline the other checks are held to."""
    out = tmp_path_factory.mktemp("earlier")
    assert _check(signs_bundle, fleet, out) == 0
    return out / "report" / "report.json"


@pytest.fixture(scope="module")
def slowed_bundle(signs, tmp_path_factory) -> Path:
    """The same data fine-tuned at 128 px instead of 32: sixteen times the pixels per frame, same name and
    the same checkset images (the same test split, the same seed)."""
    from edgetl.export import export
    from edgetl.train.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("slowed")
    finetune(FinetuneConfig(data=signs["train"], test=signs["test"], out=root / "run", img_size=128, epochs=1,
                            head_epochs=30))
    export(root / "run", "onnx")
    compile_bundle(root / "run", "host-cpu", root / "signs")
    return root / "signs"


def _damaged(bundle: Path, out: Path) -> Path:
    """`bundle` with its head's first two classes swapped (rows of W and b), re-hashed in its manifest:
    a bundle that verifies and runs, and calls those two classes each other's name."""
    damaged = Path(shutil.copytree(bundle, out))
    head = dict(np.load(damaged / "head.npz"))
    for key in ("W", "b"):
        head[key] = head[key][[1, 0, *range(2, len(head[key]))]]
    np.savez(damaged / "head.npz", **head)
    manifest = json.loads((damaged / "manifest.json").read_text())
    data = (damaged / "head.npz").read_bytes()
    manifest["files"]["head.npz"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (damaged / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return damaged


def test_the_same_bundle_checked_again_passes_and_the_report_shows_both(signs_bundle, fleet, earlier, tmp_path):
    assert _check(signs_bundle, fleet, tmp_path, "--baseline", str(earlier)) == 0
    verdicts = _verdicts(tmp_path)
    assert {k: v["status"] for k, v in verdicts.items() if k.startswith("baseline_")} == {
        "baseline_latency_p95": "pass", "baseline_top1": "pass", "baseline_rss": "pass"}
    (r,) = json.loads((tmp_path / "report" / "report.json").read_text())["results"]
    comparison = Comparison.from_dict(r["baseline"], "report.json")  # a later run reads it back, typed
    assert comparison.accuracy.lost == comparison.accuracy.gained == 0 and comparison.accuracy.p_value == 1
    assert comparison.latency.p95.low <= comparison.latency.p95.ratio <= comparison.latency.p95.high
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Against the baseline" in page and page.count("<svg") == 3 and "<script" not in page
    assert "baseline (p95 dashed)" in page and "McNemar p=1" in page
    cases = ET.parse(tmp_path / "junit.xml").getroot().findall("testsuite/testcase")
    assert {"baseline_latency_p95", "baseline_top1", "baseline_rss"} <= {c.get("name") for c in cases}


def test_a_slower_bundle_of_the_same_name_fails_as_a_regression(slowed_bundle, fleet, earlier, tmp_path, capsys):
    assert _check(slowed_bundle, fleet, tmp_path, "--baseline", str(earlier)) == 1
    latency = _verdicts(tmp_path)["baseline_latency_p95"]
    assert latency["status"] == "fail" and "wholly past x1.05" in latency["why"]
    failures = ET.parse(tmp_path / "junit.xml").getroot().findall("testsuite/testcase/failure")
    assert "regression" in {f.get("type") for f in failures}
    (r,) = json.loads((tmp_path / "report" / "report.json").read_text())["results"]
    assert r["baseline"]["latency"]["p95"]["low"] > 1.05
    print(f"slowed bundle: p95 {r['baseline']['latency']['p95']}")  # the figure, for -s


def test_a_damaged_head_fails_the_accuracy_gate(signs_bundle, fleet, earlier, tmp_path, capsys):
    damaged = _damaged(signs_bundle, tmp_path / "damaged" / "signs")
    assert _check(damaged, fleet, tmp_path, "--baseline", str(earlier)) == 1
    top1 = _verdicts(tmp_path)["baseline_top1"]
    assert top1["status"] == "fail" and "a significant loss" in top1["why"]
    (r,) = json.loads((tmp_path / "report" / "report.json").read_text())["results"]
    acc = r["baseline"]["accuracy"]
    assert acc["lost"] >= 5 and acc["gained"] == 0 and acc["p_value"] < 0.05
    # 24 images cannot resolve the 1 point asked: said as a warning, in the verdict and on the console
    assert "too small to resolve" in top1["warning"] and top1["warning"] in top1["why"]
    assert "baseline_top1: warning" in capsys.readouterr().err


def test_a_baseline_of_another_device_or_bundle_is_refused_in_one_line(signs_bundle, earlier, tmp_path, capsys):
    other = _local(tmp_path / "devices", "lab")
    assert _check(signs_bundle, other, tmp_path, "--baseline", str(earlier)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no check of bundle signs on device lab (it holds: signs on bench)" in err
    renamed = Path(shutil.copytree(signs_bundle, tmp_path / "other" / "stop"))
    manifest = json.loads((renamed / "manifest.json").read_text())
    (renamed / "manifest.json").write_text(json.dumps({**manifest, "name": "stop"}))  # another bundle name
    assert _check(renamed, _local(tmp_path / "bench-devices"), tmp_path, "--baseline", str(earlier)) == 2
    assert "has no check of bundle stop on device bench" in capsys.readouterr().err
    assert not (tmp_path / "report").exists()  # refused before any work


@pytest.mark.parametrize("text", ["not json at all", '{"results": []}', '{"edgetl": "0.1.0", "results": [{"device": '
                                  '"bench", "bundle": "signs", "measured": {"bundle": 1}}]}'])
def test_a_file_that_is_not_an_edgetl_report_is_refused_in_one_line(signs_bundle, fleet, tmp_path, capsys, text):
    bad = tmp_path / "report.json"
    bad.write_text(text)
    assert _check(signs_bundle, fleet, tmp_path, "--baseline", str(bad)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and str(bad) in err
    assert not (tmp_path / "report").exists()


def test_a_baseline_of_another_checkset_is_refused(signs_bundle, fleet, earlier, tmp_path, capsys):
    report = json.loads(earlier.read_text())
    acc = report["results"][0]["measured"]["accuracy"]
    acc["labels"], acc["predictions"] = acc["labels"][:-1], acc["predictions"][:-1]
    acc["images"] -= 1
    other = tmp_path / "old.json"
    other.write_text(json.dumps(report))
    assert _check(signs_bundle, fleet, tmp_path, "--baseline", str(other)) == 2
    err = capsys.readouterr().err
    assert "the baseline scored another image set" in err and "cannot be paired" in err
    assert not (tmp_path / "report").exists()  # nothing half-written
