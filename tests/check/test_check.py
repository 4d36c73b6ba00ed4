"""`edgetl check` against real devices: this machine, a real sshd on loopback, an emulated Pi 4;
its reports as a CI system and a person would read them."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgetl.check import NOT_JUDGED
from edgetl.cli import main
from edgetl.compile import compile_bundle
from edgetl.runtime import Model
from edgetl.runtime.measure import throttling

pytestmark = pytest.mark.hil
SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "junit-10.xsd"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
LOOSE = "[budgets]\nlatency_p95_ms = 1000\nmin_top1 = 0\nmax_rss_mb = 8000\n"


def _device(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.toml").write_text(text)
    return folder / f"{name}.toml"


def _local(folder: Path, name: str = "bench", budgets: str = LOOSE) -> Path:
    return _device(folder, name, f'name = "{name}"\ntarget = "host-cpu"\ntransport = "local"\n'
                                 f'[local]\nworkdir = "../{name}-board"\n{budgets}')


def _junit(path: Path):
    import xmlschema

    xmlschema.XMLSchema(SCHEMA).validate(path)  # raises on any departure from the schema
    import xml.etree.ElementTree as ET

    return ET.parse(path).getroot()


@pytest.fixture(scope="module")
def host_bundle(quantized_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("check") / "signs"
    compile_bundle(quantized_run, "host-cpu", out)
    return out


@pytest.fixture(scope="module")
def local_check(host_bundle, tmp_path_factory) -> Path:
    """One real check on this machine with loose budgets, its reports written."""
    root = tmp_path_factory.mktemp("local-check")
    device = _local(root / "fleet")
    code = main(["check", str(host_bundle), "--device", str(device), "--runs", "50", "--warmup", "5",
                 "--report", str(root / "report"), "--junit", str(root / "junit.xml")])
    assert code == 0
    return root


def test_check_measures_on_the_device_and_every_loose_budget_holds(local_check, host_bundle):
    report = json.loads((local_check / "report" / "report.json").read_text())
    assert report["exit_code"] == 0
    (r,) = report["results"]
    lat = r["measured"]["latency_ms"]
    assert r["status"] == "pass" and lat["runs"] == 50 and len(lat["samples"]) == 50
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert r["measured"]["peak_rss_mb"] > 50 and r["measured"]["throughput_fps"] > 0
    assert {v["budget"]: v["status"] for v in r["verdicts"]} == {
        "latency_p95_ms": "pass", "max_rss_mb": "pass", "min_top1": "pass"}
    # the device scored the bundle's own checkset, and predicted what the host predicts
    model = Model.load(host_bundle)
    pixels, labels = model.bundle.checkset()
    assert r["measured"]["accuracy"]["images"] == len(labels) == 4 * 6  # every test image (100 asked)
    assert r["measured"]["accuracy"]["predictions"] == [p.label for p in model.predict(pixels)]


def test_the_junit_file_validates_and_has_a_testcase_per_budget(local_check):
    root = _junit(local_check / "junit.xml")
    cases = root.findall("testsuite/testcase")
    assert sorted(c.get("name") for c in cases) == ["latency_p95_ms", "max_rss_mb", "min_top1"]
    assert root.get("failures") == "0" and root.get("errors") == "0"


def test_the_html_report_renders_in_headless_chromium(local_check, tmp_path):
    from tests.standins import need

    need(CHROMIUM, "chromium is not installed (`make test` installs it with apt where it can)")
    page = local_check / "report" / "report.html"
    text = page.read_text()
    assert text.count("<svg") == 2 and "Latency per device" in text and "<script" not in text
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,1000",
                    f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1000, 1200)
    # the page drew something: the histogram's bars (#54aeff) and the pass badge's green are on screen
    assert (np.abs(pixels.astype(int) - (0x54, 0xAE, 0xFF)).sum(axis=2) < 30).sum() > 200
    assert (np.abs(pixels.astype(int) - (0x1A, 0x7F, 0x37)).sum(axis=2) < 30).sum() > 50


def test_a_budget_too_tight_to_hold_fails_with_exit_1(host_bundle, tmp_path, capsys):
    device = _local(tmp_path / "fleet", budgets="[budgets]\nlatency_p95_ms = 0.001\nmin_top1 = 0\n")
    code = main(["check", str(host_bundle), "--device", str(device), "--runs", "20", "--warmup", "2",
                 "--junit", str(tmp_path / "junit.xml")])
    assert code == 1
    assert "p95" in capsys.readouterr().out
    failures = _junit(tmp_path / "junit.xml").findall("testsuite/testcase/failure")
    assert [f.get("type") for f in failures] == ["budget"] and "> 0.001 ms" in failures[0].get("message")


def test_a_stopped_sshd_is_exit_3_retried_once_and_never_a_budget_failure(sshd, host_bundle, tmp_path):
    from tests.standins import LoopbackSshd

    server = LoopbackSshd(tmp_path / "sshd").start()
    device = _device(tmp_path / "fleet", "lab", server.device_toml("lab") + LOOSE)
    server.stop()
    code = main(["check", str(host_bundle), "--device", str(device), "--runs", "5",
                 "--report", str(tmp_path / "report"), "--junit", str(tmp_path / "junit.xml")])
    assert code == 3
    (r,) = json.loads((tmp_path / "report" / "report.json").read_text())["results"]
    assert r["status"] == "error" and r["attempts"] == 2 and "lab" in r["error"]
    errors = _junit(tmp_path / "junit.xml").findall("testsuite/testcase/error")
    assert [e.get("type") for e in errors] == ["infrastructure"]
    assert not _junit(tmp_path / "junit.xml").findall("testsuite/testcase/failure")


def test_a_fleet_over_ssh_and_emulation_is_checked_in_parallel_with_the_same_predictions(
        sshd, arm64_root, quantized_run, host_bundle, tmp_path, capsys):
    fleet = tmp_path / "fleet"
    _device(fleet, "lab", sshd.device_toml("lab", workdir=str(tmp_path / "lab")) + LOOSE)
    _device(fleet, "pi", f'name = "pi"\ntarget = "rpi4"\ntransport = "emulated"\n'
                         f'[emulated]\nroot = "{arm64_root}"\nworkdir = "{tmp_path / "pi-work"}"\n{LOOSE}')
    compile_bundle(quantized_run, "rpi4", tmp_path / "pi4")
    code = main(["check", str(host_bundle), str(tmp_path / "pi4"), "--devices", str(fleet), "--runs", "20",
                 "--report", str(tmp_path / "report"), "--junit", str(tmp_path / "junit.xml")])
    out = capsys.readouterr()
    assert code == 0, out.err
    results = {r["device"]: r for r in json.loads((tmp_path / "report" / "report.json").read_text())["results"]}
    assert set(results) == {"lab", "pi"}  # each bundle went only to the device of its CPU
    assert results["lab"]["bundle"] == "signs" and results["pi"]["bundle"] == "pi4"
    for name, bundle in (("lab", host_bundle), ("pi", tmp_path / "pi4")):
        model = Model.load(bundle, machine="any")  # the same bundle run here
        pixels, _ = model.bundle.checkset()
        assert results[name]["measured"]["accuracy"]["predictions"] == [p.label for p in model.predict(pixels)]
    pi = {v["budget"]: v["status"] for v in results["pi"]["verdicts"]}
    assert pi == {"latency_p95_ms": NOT_JUDGED, "max_rss_mb": NOT_JUDGED, "min_top1": "pass"}  # only correctness
    assert results["pi"]["measured"]["latency_ms"]["runs"] == 3
    skipped = _junit(tmp_path / "junit.xml").findall("testsuite/testcase/skipped")
    assert len(skipped) == 2 and all("emulated" in s.get("message") for s in skipped)
    assert "lab" in out.out and "pi" in out.out  # one summary table


def test_throttling_is_read_from_the_firmware_or_the_clock():
    cool = {"temp_c": 50.0, "freq_mhz": 1800.0, "max_freq_mhz": 1800.0, "throttled_bits": None}
    assert throttling(cool, cool) == (False, "1800 of 1800 MHz at 50.0 C after the run")
    hot = {**cool, "temp_c": 83.0, "freq_mhz": 1000.0}
    assert throttling(cool, hot)[0] is True
    assert throttling(cool, {**hot, "throttled_bits": 0x50000})[0] is False  # only happened before: not now
    assert throttling(cool, {**hot, "throttled_bits": 0x50005})[0] is True  # bit 2: throttled now
    bare = dict.fromkeys(cool)
    assert throttling(bare, bare)[0] is None  # a VM: says it cannot tell


def test_a_device_file_that_does_not_exist_or_no_matching_device_is_exit_2(host_bundle, tmp_path, capsys):
    assert main(["check", str(host_bundle), "--device", str(tmp_path / "nope.toml")]) == 2
    pi = _device(tmp_path / "fleet", "pi", 'name = "pi"\ntarget = "rpi4"\ntransport = "local"\n')
    assert main(["check", str(host_bundle), "--device", str(pi)]) == 2
    assert "no device among pi runs x86_64 bundles" in capsys.readouterr().err


def test_a_bundle_without_a_checkset_points_to_data(host_bundle, tmp_path):
    bare = Path(shutil.copytree(host_bundle, tmp_path / "signs"))
    manifest = json.loads((bare / "manifest.json").read_text())
    del manifest["files"]["checkset.npz"]
    manifest["checkset"] = None
    (bare / "checkset.npz").unlink()
    (bare / "manifest.json").write_text(json.dumps(manifest))
    from edgetl.errors import EdgetlError
    from edgetl.runtime.measure import measure

    with pytest.raises(EdgetlError, match="no checkset.*--data"):
        measure(bare, runs=1, warmup=0)


def test_data_on_the_device_replaces_the_checkset_and_a_duration_the_count(host_bundle, signs, tmp_path, capsys):
    device = _local(tmp_path / "fleet")
    assert main(["check", str(host_bundle), "--device", str(device), "--duration", "0.5", "--warmup", "0",
                 "--data", str(signs["city_b"]), "--report", str(tmp_path / "report"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])  # --json: one record per bundle and device
    assert record["status"] == "pass" and record["top1"] is not None and "samples" not in record["latency_ms"]
    # beside predict's latency, the engine's own invoke of the same frames: its share of each frame
    share = record["engine_share"]
    assert 0 < share["invoke_p50"] <= share["predict_p50"] * 1.5 and share["share"] == pytest.approx(
        share["invoke_p50"] / share["predict_p50"], abs=1e-3)
    (r,) = json.loads((tmp_path / "report" / "report.json").read_text())["results"]
    assert r["measured"]["engine_share"] == share
    html = (tmp_path / "report" / "report.html").read_text()
    assert "engine share" in html and f"{share['share']:.0%}</td>" in html
    assert r["measured"]["latency_ms"]["runs"] > 5  # as many frames as half a second holds
    assert r["measured"]["accuracy"]["source"] == str(signs["city_b"]) and r["measured"]["accuracy"]["images"] == 24
    assert "on 24 images" in r["verdicts"][-1]["why"]
