"""The pytest plugin as a CI job uses it: pytest run on a test file against a fleet."""

import pytest

from tests.standins import LoopbackSshd

pytestmark = pytest.mark.hil
LOOSE = "[budgets]\nlatency_p95_ms = 1000\nmin_top1 = 0\nmax_rss_mb = 8000\n"
TESTS = """
def test_meets_its_budgets(edgetl_device):
    edgetl_device.assert_budgets()

def test_fast_enough(edgetl_device):
    edgetl_device.assert_latency(p95_ms=1000)

def test_scores_the_checkset(edgetl_device):
    assert edgetl_device.check().measured["accuracy"]["images"] == 24
"""


@pytest.fixture(scope="module")
def fleet(sshd, arm64_root, quantized_run, tmp_path_factory):
    """bench (this machine, loose budgets), lab (real sshd, a budget no model meets), gone (sshd
    stopped), pi (an emulated Pi 4 the bundle is not built for)."""
    from edgetl.compile import compile_bundle

    root = tmp_path_factory.mktemp("plugin")
    folder = root / "fleet"
    folder.mkdir()
    (folder / "bench.toml").write_text(f'name = "bench"\ntarget = "host-cpu"\ntransport = "local"\n'
                                       f'[local]\nworkdir = "{root / "bench"}"\n{LOOSE}')
    tight = LOOSE.replace("1000", "0.001")
    (folder / "lab.toml").write_text(sshd.device_toml("lab", workdir=str(root / "lab")) + tight)
    gone = LoopbackSshd(root / "gone-sshd").start()
    (folder / "gone.toml").write_text(gone.device_toml("gone"))
    gone.stop()
    (folder / "pi.toml").write_text(f'name = "pi"\ntarget = "rpi4"\ntransport = "emulated"\n'
                                    f'[emulated]\nroot = "{arm64_root}"\nworkdir = "{root / "pi"}"\n')
    compile_bundle(quantized_run, "host-cpu", root / "signs")
    return folder, root / "signs"


def test_tests_run_per_device_failing_on_budgets_and_skipping_what_cannot_run(pytester, fleet):
    folder, bundle = fleet
    pytester.makepyfile(test_fleet=TESTS)
    result = pytester.runpytest("--edgetl-devices", str(folder), "--edgetl-bundle", str(bundle),
                                "--edgetl-runs", "20", "-rfs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, failed=1, skipped=6)
    result.stdout.fnmatch_lines(["*AssertionError: lab: p95 * ms > 0.001 ms*",
                                 "FAILED test_fleet.py::test_meets_its_budgets?lab?*"])
    result.stdout.fnmatch_lines(["*device gone (*) does not answer: *Connection refused*"])
    result.stdout.fnmatch_lines(["*no --edgetl-bundle is built for pi's aarch64*"])


def test_require_all_fails_an_unreachable_device(pytester, fleet):
    folder, bundle = fleet
    pytester.makepyfile(test_fleet=TESTS)
    result = pytester.runpytest("--edgetl-devices", str(folder), "--edgetl-bundle", str(bundle),
                                "--edgetl-runs", "20", "--edgetl-require-all", "-k", "gone", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=3)  # set-up fails: the device, not the test
    result.stdout.fnmatch_lines(["*gone*does not answer*(--edgetl-require-all)*"])


def test_a_run_that_breaks_is_an_error_not_a_failure(pytester, tmp_path, fleet):
    _, bundle = fleet
    folder = tmp_path / "fleet"
    folder.mkdir()
    (folder / "ro.toml").write_text('name = "ro"\ntarget = "host-cpu"\ntransport = "local"\n'
                                    '[local]\nworkdir = "/proc/edgetl"\n')  # nothing can be written there
    pytester.makepyfile(test_fleet=TESTS)
    result = pytester.runpytest("--edgetl-devices", str(folder), "--edgetl-bundle", str(bundle), "-p",
                                "no:cacheprovider")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*DeviceRunBroke: ro: *after 2 attempts*"])


def test_without_its_options_the_plugin_stays_out_of_the_way(pytester):
    pytester.makepyfile("def test_plain():\n    assert True\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_text_bundle_is_checked_per_sentence_like_an_image_one(pytester, text_run, tmp_path):
    from edgetl.compile import compile_bundle

    folder = tmp_path / "fleet"
    folder.mkdir()
    (folder / "bench.toml").write_text(f'name = "bench"\ntarget = "host-cpu"\ntransport = "local"\n'
                                       f'[local]\nworkdir = "{tmp_path / "bench"}"\n{LOOSE}')
    compile_bundle(text_run, "host-cpu", tmp_path / "intents")
    pytester.makepyfile(test_fleet="""
def test_meets_its_budgets(edgetl_device):
    edgetl_device.assert_budgets()

def test_per_sentence(edgetl_device):
    m = edgetl_device.check().measured
    assert m["unit"] == "sentence (16 tokens)" and m["accuracy"]["images"] == 32
""")
    result = pytester.runpytest("--edgetl-devices", str(folder), "--edgetl-bundle", str(tmp_path / "intents"),
                                "--edgetl-runs", "20", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


SEEN = """
import json, os

def _note(edgetl_device, test):
    m = edgetl_device.check().measured
    with open(os.environ["SEEN_FILE"], "a") as f:
        f.write(json.dumps([edgetl_device.name, test, os.environ.get("PYTEST_XDIST_WORKER"),
                            list(m.latency_ms.samples)]) + "\\n")

def test_one(edgetl_device):
    _note(edgetl_device, 1)

def test_two(edgetl_device):
    _note(edgetl_device, 2)

def test_three(edgetl_device):
    _note(edgetl_device, 3)
"""


@pytest.fixture(scope="module")
def two_boards(quantized_run, tmp_path_factory):
    """Two stand-in devices (this machine, two private workdirs) and a bundle for them."""
    from edgetl.compile import compile_bundle

    root = tmp_path_factory.mktemp("xdist")
    folder = root / "fleet"
    folder.mkdir()
    for name in ("left", "right"):
        (folder / f"{name}.toml").write_text(f'name = "{name}"\ntarget = "host-cpu"\ntransport = "local"\n'
                                             f'[local]\nworkdir = "{root / name}"\n{LOOSE}')
    compile_bundle(quantized_run, "host-cpu", root / "signs")
    return folder, root / "signs"


@pytest.mark.parametrize("dist", ["loadgroup", "load"])
def test_under_xdist_each_device_is_checked_once_and_the_reports_merge(pytester, two_boards, tmp_path, monkeypatch,
                                                                       dist):
    import json

    folder, bundle = two_boards
    seen = tmp_path / "seen.jsonl"
    monkeypatch.setenv("SEEN_FILE", str(seen))
    pytester.makepyfile(test_fleet=SEEN)
    result = pytester.runpytest_subprocess("-n", "2", "--dist", dist, "--edgetl-devices", str(folder),
                                           "--edgetl-bundle", str(bundle), "--edgetl-runs", "10",
                                           "--edgetl-report", str(tmp_path / "report"), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    rows = [json.loads(line) for line in seen.read_text().splitlines()]
    for device in ("left", "right"):
        samples = {json.dumps(r[3]) for r in rows if r[0] == device}
        assert len(samples) == 1, f"{device} was measured {len(samples)} times"  # one check, shared
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert sorted(r["device"] for r in report["results"]) == ["left", "right"]
    assert (tmp_path / "report" / "report.html").is_file()
