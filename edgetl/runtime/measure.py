"""What `edgetl check` measures on the device: per-frame latency, memory, thermals and accuracy.

Latency is what the application sees: `Model.predict` of one frame already at the model's size,
after a warm-up, timed frame by frame for a count or a duration; each is followed by the engine's
raw invoke of the same frame, timed apart, so the report says what share of a frame is the
engine's and what the runtime adds on this board (frames/s: back-to-back predicts, 1 / mean). Peak RSS is the process's
high-water mark with the model loaded and run. Temperature and CPU frequency are read before the
warm-up and after the timed runs where the board exposes them (/sys/class/thermal, cpufreq, and
`vcgencmd get_throttled` on a Raspberry Pi); a board that slowed itself down during the run is
flagged, because its figures are then the thermals' and not the model's. Accuracy is top-1 on
the bundle's checkset (uint8 pixels in `checkset.npz`, so no image decoder is needed) or on a
labelled folder on the device, with the version of the head scored (0: the bundle's own; a head
adapted on the device is read under the head store's shared lock, so a concurrent adapt cannot
pull it away mid-read). Standard library and numpy only, plus the bundle's engine.
"""

from __future__ import annotations

import glob
import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from edgetl.runtime.records import Record, record

SAMPLES_KEPT = 5000  # latency samples returned for the report's histogram


def peak_rss_mb() -> float:
    """This process's own high-water mark: VmHWM of /proc/self/status, where the kernel has it. Not
    getrusage's ru_maxrss, which Linux carries across fork and exec: run from a big parent (a
    pipeline that has just trained), it would report the parent's memory as the model's."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@record
class Latency(Record):
    """Per-frame latency in ms after the warm-up; `samples` (the first SAMPLES_KEPT) for histograms, and
    beside each the involuntary context switches of this process while it ran (`preempted`): a frame the
    OS took the CPU from is slow because of the host's other work, not the model's (`--baseline` leaves
    such frames out)."""

    OPTIONAL_KEYS = frozenset({"preempted"})  # lines from runtimes before it was counted

    runs: int
    warmup: int
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    mean: float
    samples: tuple[float, ...] = ()
    preempted: tuple[int, ...] = ()


@record
class EngineShare(Record):
    """The engine's own invoke per frame beside `Model.predict`, each predict followed by a raw invoke of the
    same frame's prepared input, timed apart: `share` = invoke p50 / predict p50 (0-1), so
    predict_p50 - invoke_p50 is what the runtime adds on this board (input, head, softmax, records)."""

    invoke_p50: float  # ms
    predict_p50: float  # ms, of the same runs
    share: float

    @property
    def runtime_ms(self) -> float:
        return round(self.predict_p50 - self.invoke_p50, 4)


@record
class BoardState(Record):
    """Temperature (C) and CPU frequency (MHz) where the board exposes them; None where it does not."""

    temp_c: float | None = None
    freq_mhz: float | None = None
    max_freq_mhz: float | None = None
    throttled_bits: int | None = None


@record
class Thermals(Record):
    before: BoardState
    after: BoardState
    throttled: bool | None  # None: the board cannot tell
    evidence: str


@record
class Accuracy(Record):
    """Top-1 in percent (0-100) on `images` images of `source` (the checkset or a folder)."""

    source: str
    images: int
    top1: float
    predictions: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()


@record
class Measurement(Record):
    """What `edgetl check` measured on a device: written there as one JSON line, read here by check,
    its report, the CLI and the pytest plugin."""

    OPTIONAL_KEYS = frozenset({"engine_share", "unit"})  # lines from runtimes before they were measured

    bundle: str
    engine: str
    precision: str
    target: str
    head_version: int  # 0: the bundle's own head; else the head store's version scored
    load_s: float
    latency_ms: Latency
    throughput_fps: float | None
    peak_rss_mb: float
    thermals: Thermals
    accuracy: Accuracy
    engine_share: EngineShare | None = None  # None: an engine that invokes more than one frame at a time
    unit: str = "frame"  # what one timed predict took: a frame, or a text bundle's "sentence (N tokens)"
    schema_version: int = 1


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def thermals() -> dict:
    """CPU temperature (max over thermal zones, C), current and max frequency (MHz), and the
    firmware's throttling bits where `vcgencmd` exists; None for what the board does not expose."""
    temps = [int(t) / 1000 for t in (_read(z) for z in glob.glob("/sys/class/thermal/thermal_zone*/temp"))
             if t and t.lstrip("-").isdigit()]
    cur = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    top = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    out = {"temp_c": max(temps) if temps else None,
           "freq_mhz": int(cur) / 1000 if cur and cur.isdigit() else None,
           "max_freq_mhz": int(top) / 1000 if top and top.isdigit() else None,
           "throttled_bits": None}
    if shutil.which("vcgencmd"):
        try:
            said = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5).stdout
            out["throttled_bits"] = int(said.strip().split("=")[1], 16)
        except (OSError, subprocess.SubprocessError, IndexError, ValueError):
            pass
    return out


def throttling(before: dict, after: dict) -> tuple[bool | None, str]:
    """Whether the board slowed itself during the run, and the evidence; None when it cannot tell."""
    bits = after.get("throttled_bits")
    if bits is not None:
        # Raspberry Pi firmware: bit 2 throttled now, bit 1 frequency capped now, bit 3 soft temp limit
        now = bits & 0b1110
        return bool(now), f"vcgencmd get_throttled=0x{bits:x}"
    freq, top = after.get("freq_mhz"), after.get("max_freq_mhz")
    if freq and top:
        slowed = freq < 0.9 * top and (after.get("temp_c") or 0) >= 80
        return slowed, f"{freq:.0f} of {top:.0f} MHz at {after.get('temp_c')} C after the run"
    return None, "the board exposes no frequency or throttling state"


def percentile(ms: np.ndarray, q: float) -> float:
    return round(float(np.percentile(ms, q)), 4)


def preemptions() -> int:
    """Involuntary context switches of this process so far (every thread's): the OS gave its CPU away."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


def measure(bundle, *, runs: int | None = 200, duration_s: float | None = None, warmup: int = 20,
            data: str | Path | None = None, key=None, machine: str | None = None) -> Measurement:
    """Load `bundle`, time `runs` frames (or for `duration_s`) after `warmup`, and score it."""
    from edgetl.runtime.model import Model

    t0 = time.perf_counter()
    with Model.load(bundle, key=key, machine=machine) as model:  # its engine freed after (TensorRT)
        load_s = time.perf_counter() - t0
        if data is not None:
            items, labels = model.labelled(data)
            source = str(data)
        else:
            items, labels = model.bundle.checkset()
            source = "checkset"
        frames = model.inputs(items)  # decoded once (a text model: the sentences, tokenized in each predict)
        engine = model.engine
        alone = engine.batch == 1  # an engine of a larger static batch has no one-frame invoke to time
        before = thermals()
        for i in range(warmup):
            model.predict(frames[i % len(frames)])
        samples, invokes, preempted, start = [], [], [], time.perf_counter()
        i = 0
        while (runs is None or i < runs) and (duration_s is None or time.perf_counter() - start < duration_s):
            k = i % len(frames)
            switches = preemptions()  # read outside the timed span
            t = time.perf_counter()
            model.predict(frames[k])
            samples.append(time.perf_counter() - t)
            preempted.append(preemptions() - switches)
            if alone:  # the same frame, the engine alone (its input made untimed: a frame at a time, no big copy)
                x = model.engine_input(frames[k : k + 1])
                t = time.perf_counter()
                engine.invoke(x)
                invokes.append(time.perf_counter() - t)
            i += 1
        after = thermals()
        predicted = [p.label for p in model.predict(frames)]
        hits = [p == t for p, t in zip(predicted, labels, strict=True)]
        ms = np.asarray(samples) * 1000
        share = None
        if invokes:
            invoke_p50 = percentile(np.asarray(invokes) * 1000, 50)
            share = EngineShare(invoke_p50=invoke_p50, predict_p50=percentile(ms, 50),
                                share=round(invoke_p50 / max(percentile(ms, 50), 1e-9), 4))
        throttled, evidence = throttling(before, after)
        m = model.bundle.manifest
        return Measurement(
            bundle=m.name, engine=m.engine, precision=m.precision, target=m.target,
            head_version=model.head_version, load_s=round(load_s, 3),
            latency_ms=Latency(runs=len(ms), warmup=warmup, p50=percentile(ms, 50), p90=percentile(ms, 90),
                               p95=percentile(ms, 95), p99=percentile(ms, 99), max=round(float(ms.max()), 4),
                               mean=round(float(ms.mean()), 4),
                               samples=tuple(round(float(x), 4) for x in ms[:SAMPLES_KEPT]),
                               preempted=tuple(preempted[:SAMPLES_KEPT])),
            throughput_fps=round(1000.0 / float(ms.mean()), 2) if ms.mean() > 0 else None,
            peak_rss_mb=peak_rss_mb(),
            thermals=Thermals(BoardState(**before), BoardState(**after), throttled, evidence),
            accuracy=Accuracy(source=source, images=len(hits), top1=round(100.0 * sum(hits) / len(hits), 2),
                              predictions=tuple(predicted), labels=tuple(labels)),
            engine_share=share,
            unit=f"sentence ({model.max_len} tokens)" if model.text else "frame",
        )
