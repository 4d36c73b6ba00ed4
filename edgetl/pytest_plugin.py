"""pytest plugin (entry point `pytest11`): the same tests on every board of a fleet, in CI.

    pytest --edgetl-devices devices/ --edgetl-bundle dist/host-cpu --edgetl-bundle dist/rpi5

    def test_meets_its_budgets(edgetl_device):
        edgetl_device.assert_budgets()            # p95 latency, top-1, peak RSS: device over target

    def test_fast_enough_for_30_fps(edgetl_device):
        edgetl_device.assert_latency(p95_ms=33)   # skipped on emulated devices: their timings are qemu's

    def test_knows_stop_signs(edgetl_device):
        assert edgetl_device.check().measured.accuracy.top1 > 80

A test taking `edgetl_device` runs once per device (the test id names it). A device that does
not answer is skipped with the reason, or fails the test under `--edgetl-require-all`; a device
no given bundle is built for is skipped. The check (deploy, time, score) runs when the fixture is
set up, once per device and bundle per session, so a device whose run broke makes the test an
error while a budget miss is a test failure: CI systems tell the two apart. Without these
options the plugin does nothing.

A fleet of many boards spreads over pytest-xdist's workers (`pytest -n 4 --dist loadgroup`): each
device's tests are marked as one xdist group, and the devices run in parallel. Whatever the
distribution mode, a device is checked once per session: the workers share
their checks through a directory the controller makes, under a lock per device and bundle, and
`--edgetl-report DIR` writes one report (report.json, report.html) of every worker's checks.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from edgetl.errors import DeviceRunBroke

_PROBES = pytest.StashKey[dict]()
_CHECKS = pytest.StashKey[dict]()
_MANIFESTS = pytest.StashKey[dict]()
_BASELINE = pytest.StashKey[object]()
_SHARED = pytest.StashKey[Path]()  # the checks every worker shares: KEY.json under KEY.lock
_SHARED_KEY = "edgetl_shared_checks"


def pytest_addoption(parser) -> None:
    group = parser.getgroup("edgetl", "hardware-in-the-loop checks of edgetl bundles")
    group.addoption("--edgetl-devices", type=Path, help="a directory of device files: tests run on each")
    group.addoption("--edgetl-bundle", type=Path, action="append", default=[],
                    help="a bundle dir or .tar.gz (repeat for several targets; each device gets its CPU's)")
    group.addoption("--edgetl-require-all", action="store_true",
                    help="fail, instead of skip, the tests of a device that does not answer")
    group.addoption("--edgetl-runs", type=int, default=100, help="timed frames per check (default 100)")
    group.addoption("--edgetl-report", type=Path, help="write report.json and report.html of every device's "
                    "check here at the end (all workers' under pytest-xdist)")
    group.addoption("--edgetl-baseline", type=Path, help="an earlier `edgetl check` report.json: each check is "
                    "also held against it (default gate), see assert_no_regression()")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "edgetl_device: runs once per device of --edgetl-devices")
    if not config.pluginmanager.hasplugin("xdist"):
        config.addinivalue_line("markers", "xdist_group(name): the device's tests, kept on one pytest-xdist worker")
    config.stash[_PROBES] = {}
    config.stash[_CHECKS] = {}
    config.stash[_MANIFESTS] = {}
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get(_SHARED_KEY):
        config.stash[_SHARED] = Path(workerinput[_SHARED_KEY])
    elif config.getoption("edgetl_devices") is not None or config.getoption("edgetl_bundle"):
        config.stash[_SHARED] = Path(tempfile.mkdtemp(prefix="edgetl-pytest-"))  # removed at the session's end


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """pytest-xdist, on the controller: every worker shares the controller's checks dir."""
    shared = node.config.stash.get(_SHARED, None)
    if shared is not None:
        node.workerinput[_SHARED_KEY] = str(shared)


def pytest_sessionfinish(session) -> None:
    """On the controller (or the one process): the merged report, then the shared dir removed."""
    config = session.config
    shared = config.stash.get(_SHARED, None)
    if shared is None or getattr(config, "workerinput", None) is not None:
        return
    try:
        folder = config.getoption("edgetl_report")
        if folder is not None:
            from edgetl.check import Result, report

            results = [Result.from_dict(json.loads(f.read_text()), str(f)) for f in sorted(shared.glob("*.json"))]
            for path in report.write(results, folder):
                config.get_terminal_writer().line(f"edgetl: wrote {path}")
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def pytest_generate_tests(metafunc) -> None:
    if "edgetl_device" not in metafunc.fixturenames:
        return
    from edgetl import devices
    from edgetl.errors import EdgetlError

    folder = metafunc.config.getoption("edgetl_devices")
    try:
        fleet = devices.select(folder=folder)
    except EdgetlError as exc:
        raise pytest.UsageError(f"--edgetl-devices: {exc}") from None
    metafunc.parametrize("edgetl_device", [pytest.param(d, id=d.name, marks=pytest.mark.xdist_group(d.name))
                                           for d in fleet], indirect=True)


class DeviceUnderTest:
    """One device of the fleet as a test sees it: the check's result and assertions on it."""

    def __init__(self, device, bundle: Path | None, config):
        self.device, self.bundle, self._config = device, bundle, config

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def emulated(self) -> bool:
        return self.device.is_emulated

    def check(self):
        """The bundle deployed, timed and scored on this device: an `edgetl.check.Result`."""
        if self.bundle is None:
            pytest.skip("no --edgetl-bundle given")
        from edgetl.check import ERROR, Plan, check_one  # here: a pytest run without these options loads none

        key = (self.device.name, str(self.bundle))
        cache = self._config.stash[_CHECKS]
        if key not in cache:
            def measure():
                plan = Plan(runs=self._config.getoption("edgetl_runs"))
                result = check_one(self.bundle, self.device, plan, _manifest(self._config, self.bundle))
                _against_baseline(self._config, result)
                return result

            cache[key] = _shared_check(self._config, key, measure)
        result = cache[key]
        if result.status == ERROR:
            raise DeviceRunBroke(f"{self.name}: {result.error} (after {result.attempts} attempts)")
        return result

    def assert_budgets(self) -> None:
        """Every budget the device is judged on holds (latency and memory are not judged under emulation),
        and with --edgetl-baseline no regression against it either."""
        from edgetl.check import FAIL

        failed = [v.why for v in self.check().verdicts if v.status == FAIL]
        assert not failed, f"{self.name}: " + "; ".join(failed)

    def assert_no_regression(self) -> None:
        """No regression against --edgetl-baseline: p95 latency, top-1 (McNemar) and peak RSS."""
        if self._config.getoption("edgetl_baseline") is None:
            pytest.skip("no --edgetl-baseline given")
        from edgetl.check import FAIL

        failed = [v.why for v in self.check().verdicts if v.regression and v.status == FAIL]
        assert not failed, f"{self.name}: regression: " + "; ".join(failed)

    def assert_latency(self, p95_ms: float) -> None:
        if self.emulated:
            pytest.skip(f"{self.name} is emulated: its timings are qemu's")
        p95 = self.check().measured.latency_ms.p95
        assert p95 <= p95_ms, f"{self.name}: p95 {p95:g} ms > {p95_ms:g} ms"

    def assert_top1(self, at_least: float) -> None:
        top1 = self.check().measured.accuracy.top1
        assert top1 >= at_least, f"{self.name}: top-1 {top1:g}% < {at_least:g}%"

    def __repr__(self) -> str:
        return f"<edgetl device {self.name} ({self.device.transport}, {self.device.target.name})>"


@pytest.fixture
def edgetl_device(request) -> DeviceUnderTest:
    """The device this test runs on (parametrized over --edgetl-devices; default: this machine)."""
    device = request.param
    config = request.config
    probes = config.stash[_PROBES]
    if device.name not in probes:
        probes[device.name] = device.probe()
    probe = probes[device.name]
    if not probe.reachable:
        message = f"device {device.name} ({device.address}) does not answer: {probe.reason}"
        if config.getoption("edgetl_require_all"):
            pytest.fail(f"{message} (--edgetl-require-all)", pytrace=False)
        pytest.skip(message)
    bundle = _bundle_for(device, config)
    if config.getoption("edgetl_bundle") and bundle is None:
        pytest.skip(f"no --edgetl-bundle is built for {device.name}'s {'/'.join(device.target.arch)}")
    under_test = DeviceUnderTest(device, bundle, config)
    if bundle is not None:
        under_test.check()  # here, in set-up: a broken run is the test's error, not its failure
    return under_test


def _manifest(config, path: Path):
    """A bundle's manifest, verified once per session (not once per test and device)."""
    from edgetl.check import manifest_of
    from edgetl.errors import EdgetlError

    cache = config.stash[_MANIFESTS]
    if path not in cache:
        try:
            cache[path] = manifest_of(path)
        except EdgetlError as exc:
            raise pytest.UsageError(f"--edgetl-bundle {path}: {exc}") from None
    return cache[path]


def _against_baseline(config, result) -> None:
    """`result` held against --edgetl-baseline (read once per session), when one is given."""
    path = config.getoption("edgetl_baseline")
    if path is None or result.measured is None:
        return
    from edgetl.check import baseline
    from edgetl.errors import EdgetlError

    try:
        if _BASELINE not in config.stash:
            config.stash[_BASELINE] = baseline.load(path)
        baseline.judge_against([result], config.stash[_BASELINE], baseline.Gate())
    except EdgetlError as exc:
        raise pytest.UsageError(f"--edgetl-baseline {path}: {exc}") from None


def _shared_check(config, key: tuple[str, str], measure):
    """The check of `key`, made once across every worker: the first to take the key's lock measures and
    writes the result; the others wait on the lock and read it."""
    from edgetl.check import Result
    from edgetl.runtime.atomic import write_file

    shared = config.stash.get(_SHARED, None)
    if shared is None:
        return measure()
    name = hashlib.sha256("\0".join(key).encode()).hexdigest()[:16]
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = shared / f"{name}.json"
        if done.is_file():
            return Result.from_dict(json.loads(done.read_text()), str(done))
        result = measure()
        write_file(done, json.dumps(result.to_dict()).encode())
        return result


def _bundle_for(device, config) -> Path | None:
    for path in config.getoption("edgetl_bundle"):
        if _manifest(config, path).runs_on(device.target.arch):
            return path
    return None
