"""`edgetl check`: a bundle measured on each device and held to that device's budgets.

For every (bundle, device) pair whose CPUs match: deploy (nothing changes on a device that
already has this bundle and this runtime), then `python -m edgetl.runtime check` on the device (see
`edgetl.runtime.measure`), then each budget judged: p95 latency, top-1 on the checkset, peak
RSS, with the device file's budgets over its target's. An emulated device answers correctly but
hundreds of times slower, so there only accuracy is judged; latency and memory are reported as
not judged, never as passing.

A device that cannot be reached, or a run that breaks, is infrastructure: retried once, then
reported as an error, never as a budget failure. Devices are checked in parallel, the bundles
on one device one after another (two models timed at once on one board time each other), and
the devices that run on this machine (local, emulated) one after another for the same reason.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgetl.check.baseline import Comparison, resolution_warning
from edgetl.check.verdict import ERROR, FAIL, NOT_JUDGED, PASS, SKIPPED, Verdict  # noqa: F401 (re-exported)
from edgetl.devices import Device
from edgetl.devices.deploy import call, deploy, runtime_argv
from edgetl.errors import DeviceError, EdgetlError
from edgetl.runtime.manifest import Manifest
from edgetl.runtime.measure import Measurement
from edgetl.runtime.records import RecordError

EMULATED_RUNS, EMULATED_WARMUP = 3, 1  # enough to see the engine answer; its timings mean nothing


@dataclass
class Result:
    """One bundle on one device."""

    device: str
    target: str
    transport: str
    emulated: bool
    bundle: str
    status: str = ERROR  # pass | fail | error | skipped
    engine: str | None = None
    precision: str | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    measured: Measurement | None = None  # what the device said (`edgetl.runtime.measure`)
    baseline: Comparison | None = None  # against an earlier check (`--baseline`; its verdicts are in `verdicts`)
    head_version: int | None = None  # the head the device scored (0: the bundle's own; None: not measured)
    error: str | None = None
    attempts: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "measured": self.measured.to_dict() if self.measured else None,
                "baseline": self.baseline.to_dict() if self.baseline else None}

    @classmethod
    def from_dict(cls, raw: dict, where: str = "result") -> Result:
        """A result `to_dict` wrote (a pytest worker's, or a report's): what merges the reports of a fleet."""
        return cls(**{**raw, "verdicts": [Verdict(**v) for v in raw.get("verdicts", [])],
                      "measured": Measurement.from_dict(raw["measured"], f"{where}.measured")
                      if raw.get("measured") else None,
                      "baseline": Comparison.from_dict(raw["baseline"], f"{where}.baseline")
                      if raw.get("baseline") else None})

    def summary(self) -> dict:
        """What `edgetl check --json` prints per pair: the result without the raw samples and predictions
        (top-1 in percent)."""
        m = self.measured
        return {k: v for k, v in self.to_dict().items() if k not in ("measured", "baseline")} | {
            "latency_ms": {k: v for k, v in m.latency_ms.to_dict().items() if k != "samples"} if m else {},
            "engine_share": m.engine_share.to_dict() if m and m.engine_share else None,
            "top1": m.accuracy.top1 if m else None}

    def verdict(self, budget: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.budget == budget), None)


@dataclass(frozen=True)
class Plan:
    """How long to time and what to score on."""

    runs: int | None = 200
    duration_s: float | None = None
    warmup: int = 20
    data: str | None = None  # a labelled folder on the device instead of the checkset
    timeout_s: float = 600.0

    def args(self, device: Device) -> list[str]:
        if device.is_emulated:
            args = ["--runs", str(EMULATED_RUNS), "--warmup", str(EMULATED_WARMUP)]
        elif self.duration_s is not None:
            args = ["--duration", str(self.duration_s), "--warmup", str(self.warmup)]
        else:
            args = ["--runs", str(self.runs), "--warmup", str(self.warmup)]
        return args + (["--data", self.data] if self.data else [])


def judge(device: Device, measured: Measurement) -> list[Verdict]:
    """Each budget against what the device measured; timings on an emulated device are not judged."""
    b = device.budgets
    lat, rss, top1 = measured.latency_ms.p95, measured.peak_rss_mb, measured.accuracy.top1
    throttled = measured.thermals.throttled
    note = " (the board throttled during the run)" if throttled else ""
    out = []
    if device.is_emulated:
        out.append(Verdict("latency_p95_ms", b.latency_p95_ms, lat, NOT_JUDGED, "emulated: timings are qemu's"))
        out.append(Verdict("max_rss_mb", b.max_rss_mb, rss, NOT_JUDGED, "emulated: memory is qemu's"))
    else:
        ok = lat <= b.latency_p95_ms
        out.append(Verdict("latency_p95_ms", b.latency_p95_ms, lat, PASS if ok else FAIL,
                           f"p95 {lat:g} ms {'<=' if ok else '>'} {b.latency_p95_ms:g} ms{note}"))
        ok = rss <= b.max_rss_mb
        out.append(Verdict("max_rss_mb", b.max_rss_mb, rss, PASS if ok else FAIL,
                           f"peak RSS {rss:g} MB {'<=' if ok else '>'} {b.max_rss_mb:g} MB"))
    ok = top1 >= b.min_top1
    images = measured.accuracy.images
    why = (f"top-1 {top1:g}% {'>=' if ok else '<'} {b.min_top1:g}% on {images} images "
           f"({measured.accuracy.source})")
    warning = budget_resolution(measured, b.min_top1)
    out.append(Verdict("min_top1", b.min_top1, top1, PASS if ok else FAIL, f"{why}; {warning}" if warning else why,
                       warning))
    return out


def budget_resolution(measured: Measurement, min_top1: float) -> str:
    """A warning when one image moves top-1 by more than the margin between it and the budget: the
    verdict would then flip on a single image, so the checkset cannot resolve it."""
    acc = measured.accuracy
    if acc.images == 0 or min_top1 <= 0:
        return ""
    margin = round(abs(acc.top1 - min_top1), 2)
    return resolution_warning(acc.images, len(set(acc.labels)) or 1, margin, round(100.0 / acc.images, 2),
                              "one image", f"margin between top-1 and min_top1 {min_top1:g}%")


def check_one(bundle: Path, device: Device, plan: Plan, manifest: Manifest) -> Result:
    """`bundle` on `device`: deployed, measured, judged; infrastructure failures retried once."""
    result = Result(device.name, device.target.name, device.transport, device.is_emulated, manifest.name,
                    engine=manifest.engine, precision=manifest.precision)
    started = time.monotonic()
    for attempt in (1, 2):
        result.attempts = attempt
        try:
            deployed = deploy(bundle, device, timeout=plan.timeout_s)
            said = call(device, runtime_argv(device, ["measure", deployed.active, *plan.args(device)]),
                        timeout=plan.timeout_s)
            measured = Measurement.from_dict(said, f"{device.name}'s measurement")
        except RecordError as exc:  # a device runtime that speaks another schema: its run broke, for us
            result.error = f"{device.name}: {exc}"
            break
        except DeviceError as exc:
            result.error = str(exc)
            continue  # the device or the transport: once more
        except EdgetlError as exc:  # the device refused (a missing engine, a bad data dir): a retry won't help
            result.error = str(exc)
            break
        result.measured, result.error = measured, None
        result.head_version = measured.head_version
        result.verdicts = judge(device, measured)
        result.status = FAIL if any(v.status == FAIL for v in result.verdicts) else PASS
        break
    result.seconds = round(time.monotonic() - started, 2)
    return result


def manifest_of(bundle: str | Path) -> Manifest:
    """A bundle's manifest, once the bundle verifies here (an archive is unpacked to a temp dir for it)."""
    from edgetl.runtime.verify import open_bundle

    with tempfile.TemporaryDirectory(prefix="edgetl-check-") as tmp:
        return open_bundle(bundle, machine="any", unpack_to=Path(tmp) / "b").manifest


def pairs(bundles: list[tuple[Path, Manifest]], fleet: list[Device]) -> list[tuple[Path, Manifest, Device]]:
    """Every bundle with every device whose CPU it is built for."""
    return [(path, m, d) for d in fleet for path, m in bundles if m.runs_on(d.target.arch)]


def paired(bundles: list[tuple[Path, Manifest]], fleet: list[Device]) -> list[tuple[Path, Manifest, Device]]:
    """`pairs`, refused in one line when no device of `fleet` is built for any of the bundles."""
    work = pairs(bundles, fleet)
    if not work:
        arches = "/".join(sorted({a for _, m in bundles for a in m.arch}))
        raise EdgetlError(f"no device among {', '.join(d.name for d in fleet)} runs {arches} bundles",
                          "compile for the devices' targets, or pick devices with --device/--devices")
    return work


def check_fleet(bundles: list[tuple[Path, Manifest]], fleet: list[Device], plan: Plan) -> list[Result]:
    """All pairs; devices in parallel, one bundle at a time per device. Bundles no device can run
    are reported as skipped."""
    work = pairs(bundles, fleet)
    queues: dict[str, list] = {}
    for path, manifest, device in work:  # local and emulated devices share this machine's CPUs: one queue
        queues.setdefault(device.name if device.ssh else "this machine", []).append((path, manifest, device))
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(queues)))) as pool:
        done = pool.map(lambda jobs: [check_one(p, d, plan, m) for p, m, d in jobs], queues.values())
        results = [r for rs in done for r in rs]
    for path, manifest in bundles:
        if not any(p == path for p, _, _ in work):
            results.append(Result("-", manifest.target, "-", False, manifest.name, SKIPPED,
                                  manifest.engine, manifest.precision,
                                  error=f"no device in the fleet is {'/'.join(manifest.arch)}"))
    return results


def exit_code(results: list[Result]) -> int:
    """1 when a budget failed anywhere (a finding about the model), else 3 when a device could not
    be reached or its run broke (about the lab), else 0."""
    if any(r.status == FAIL for r in results):
        return 1
    if any(r.status == ERROR for r in results):
        return 3
    return 0
