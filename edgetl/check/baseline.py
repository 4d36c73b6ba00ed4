"""`edgetl check --baseline OLD/report.json`: this check held against an earlier one of the same
bundle name on the same device, as a regression gate.

- Latency: p95 and p50 of this run over the baseline's, each with a 95% percentile interval from a
  seeded circular block bootstrap of both runs' per-frame samples (a busy host slows frames in
  runs, not one by one, so frames are resampled in blocks). p95 is judged: it fails only when the
  whole interval lies past 1 + max_slowdown. p50 is reported beside it.
- Accuracy: McNemar's exact test on the checkset images both runs scored, paired by index: a loss
  is significant when P(at least `lost` of the discordant pairs go against this run, were each a
  coin toss) < ALPHA; it fails when significant and larger than max_top1_loss points. The smallest
  loss the checkset can show is said, as a warning when it is larger than the loss asked about.
- Memory: peak RSS past the baseline's by more than max_rss_growth percent.

Under emulation, latency and memory are not judged (qemu's); accuracy is. The comparison is carried
in report.json (`Comparison`), so a later run can read it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.check.verdict import FAIL, NOT_JUDGED, PASS, Verdict
from edgetl.errors import ConfigError
from edgetl.runtime.measure import Measurement
from edgetl.runtime.records import Record, RecordError, record

ALPHA = 0.05  # McNemar's one-sided level
LEVEL = 0.95  # the latency interval's coverage
RESAMPLES = 2000
MIN_FRAMES, MIN_OWN = 20, 0.5  # compare only the unpreempted frames when there are this many, and this share
SEED = 0  # the bootstrap's: the same two runs give the same interval, so a report is reproducible
BUDGETS = ("baseline_latency_p95", "baseline_top1", "baseline_rss")


@dataclass(frozen=True)
class Gate:
    """What counts as a regression: slowdown and RSS growth in percent, top-1 loss in points."""

    max_slowdown: float = 5.0
    max_top1_loss: float = 1.0
    max_rss_growth: float = 10.0

    def check(self) -> Gate:
        if min(self.max_slowdown, self.max_top1_loss, self.max_rss_growth) < 0:
            raise ConfigError("--max-slowdown, --max-top1-loss and --max-rss-growth must be >= 0",
                              "e.g. --max-slowdown 5 (percent) --max-top1-loss 1 (points)")
        return self


# ---- the records carried in report.json -------------------------------------------------------


@record
class Interval(Record):
    """A ratio (this run over the baseline) and its bootstrap interval."""

    ratio: float
    low: float
    high: float


@record
class LatencyChange(Record):
    """p50 and p95 (ms) before and after, their ratios with intervals, and how the bootstrap drew them."""

    before_p50: float
    after_p50: float
    before_p95: float
    after_p95: float
    p50: Interval  # of the frames compared (see `unpreempted`)
    p95: Interval
    frames_before: int  # the frames compared, of each run
    frames_after: int
    unpreempted: bool  # True: only the frames the OS did not preempt (both runs had enough of them)
    block: int  # frames per bootstrap block (the larger of the two runs' own)
    resamples: int
    before_samples: tuple[float, ...] = ()  # the baseline's kept samples (ms), for the report's overlay


@record
class AccuracyChange(Record):
    """McNemar's table on the paired checkset images: `lost` (b: right in the baseline, wrong now)
    and `gained` (c: wrong then, right now); top-1 in percent, `resolvable_loss` in points."""

    images: int
    before_top1: float
    after_top1: float
    lost: int
    gained: int
    p_value: float  # one-sided: the chance of this many losses among lost + gained if each were a coin toss
    resolvable_loss: float  # the smallest loss (points) this checkset can show as significant


@record
class MemoryChange(Record):
    before_mb: float
    after_mb: float


@record
class Comparison(Record):
    """One bundle on one device against the same pair in the baseline report."""

    baseline: str  # the report.json compared against
    created: str  # when the baseline was checked
    latency: LatencyChange | None  # None: emulated, timings are qemu's
    accuracy: AccuracyChange
    memory: MemoryChange | None  # None: emulated


# ---- reading the baseline ---------------------------------------------------------------------


@dataclass(frozen=True)
class Earlier:
    """One pair of the baseline report: what its device measured then."""

    device: str
    bundle: str
    measured: Measurement


@dataclass(frozen=True)
class Baseline:
    path: Path
    created: str
    pairs: dict[tuple[str, str], Earlier]  # (device, bundle) -> what it measured

    def find(self, device: str, bundle: str) -> Earlier:
        """The baseline's check of `bundle` on `device`; refused in one line when it has none."""
        if (device, bundle) in self.pairs:
            return self.pairs[(device, bundle)]
        held = ", ".join(f"{b} on {d}" for d, b in sorted(self.pairs)) or "no measured pair"
        raise ConfigError(f"baseline {self.path} has no check of bundle {bundle} on device {device} (it holds: {held})",
                          "compare against a report of the same bundle name on the same device")

    def refuse_unpaired(self, pairs: list[tuple[str, str]]) -> None:
        """Every (device, bundle) about to be checked has its pair here, or the first that has not is refused."""
        for device, bundle in pairs:
            self.find(device, bundle)


def load(path: str | Path) -> Baseline:
    """An earlier `edgetl check` report.json, refused in one line when it is not one."""
    path = Path(path)
    hint = "pass the report.json an earlier `edgetl check --report DIR` wrote"
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the baseline {path}: {exc.strerror or exc}", hint) from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"baseline {path} is not JSON, so not an edgetl check report", hint) from None
    if not (isinstance(raw, dict) and "edgetl" in raw and isinstance(raw.get("results"), list)):
        raise ConfigError(f"baseline {path} is not an edgetl check report (no edgetl version and results)", hint)
    pairs = {}
    for i, r in enumerate(raw["results"]):
        if not isinstance(r, dict) or not r.get("measured"):
            continue  # a pair that was skipped or broke then: nothing to compare with
        try:
            measured = Measurement.from_dict(r["measured"], f"{path}: results[{i}].measured")
        except RecordError as exc:
            raise ConfigError(str(exc), hint) from None
        pairs[(str(r.get("device")), str(r.get("bundle")))] = Earlier(str(r.get("device")), str(r.get("bundle")),
                                                                      measured)
    return Baseline(path, str(raw.get("created", "?")), pairs)


def same_checkset(earlier: Earlier, measured: Measurement, where: str) -> None:
    """Refuse to pair outcomes of two different image sets (another size, order or labels)."""
    a, b = earlier.measured.accuracy, measured.accuracy
    if a.source != b.source or a.labels != b.labels or len(a.predictions) != len(b.predictions):
        why = (f"{a.images} images of {a.source} then, {b.images} of {b.source} now" if
               (a.source, a.images) != (b.source, b.images) else "the same count, other labels or order")
        raise ConfigError(f"{where}: the baseline scored another image set ({why}), so its outcomes cannot be paired",
                          "take a baseline checked on the same checkset (same bundle build options) or --data")


# ---- statistics -------------------------------------------------------------------------------


def block_length(samples: np.ndarray) -> int:
    """Frames per bootstrap block: n^(1/3) (the rate that suits quantiles of dependent series),
    at least as long as the series stays correlated (lag-1 autocorrelation above 0.2 ... ), so a
    burst of slow frames moves together."""
    n = len(samples)
    base = max(1, round(n ** (1 / 3)))
    if n < 8 or np.std(samples) == 0:
        return base
    x = samples - samples.mean()
    denom = float(x @ x)
    lag = 1
    while lag < n // 4 and float(x[:-lag] @ x[lag:]) / denom > 0.2:
        lag *= 2
    return min(max(base, lag), max(1, n // 4))


def bootstrap_quantile(samples: np.ndarray, q: float, block: int, rng: np.random.Generator,
                       resamples: int = RESAMPLES) -> np.ndarray:
    """`resamples` values of the q-th percentile of `samples`, each drawn in circular blocks of `block`."""
    n = len(samples)
    per = -(-n // block)
    out = np.empty(resamples)
    offsets = np.arange(block)
    for lo in range(0, resamples, 200):  # in chunks: n * 200 indices at a time
        k = min(200, resamples - lo)
        starts = rng.integers(0, n, size=(k, per))
        idx = ((starts[:, :, None] + offsets) % n).reshape(k, -1)[:, :n]
        out[lo : lo + k] = np.percentile(samples[idx], q, axis=1)
    return out


def ratio_interval(before: np.ndarray, after: np.ndarray, q: float, block: int,
                   seed: int = SEED) -> Interval:
    """after's q-th percentile over before's, with its LEVEL percentile interval (seeded)."""
    rng = np.random.default_rng(seed)
    b = bootstrap_quantile(before, q, block, rng)
    a = bootstrap_quantile(after, q, block, rng)
    ratios = a / np.maximum(b, 1e-12)
    tail = (1 - LEVEL) / 2 * 100
    point = float(np.percentile(after, q) / max(np.percentile(before, q), 1e-12))
    return Interval(round(point, 4), round(float(np.percentile(ratios, tail)), 4),
                    round(float(np.percentile(ratios, 100 - tail)), 4))


def own_frames(latency) -> np.ndarray | None:
    """The frames no other work on the host took the CPU from (no involuntary context switch while
    they ran), when they are at least MIN_OWN of the run; None when the run did not count them or
    the host was too busy to leave enough."""
    samples, preempted = np.asarray(latency.samples), np.asarray(latency.preempted)
    if len(preempted) != len(samples) or len(samples) == 0:
        return None
    own = samples[preempted == 0]
    return own if len(own) >= max(MIN_FRAMES, MIN_OWN * len(samples)) else None


def latency_change(before: Measurement, after: Measurement) -> LatencyChange:
    """p50 and p95 ratios with intervals, on the frames that were the model's own in both runs (else all)."""
    b, a = own_frames(before.latency_ms), own_frames(after.latency_ms)
    unpreempted = b is not None and a is not None
    if not unpreempted:
        b, a = np.asarray(before.latency_ms.samples), np.asarray(after.latency_ms.samples)
    if len(b) == 0 or len(a) == 0:
        raise ConfigError("the baseline or this run kept no latency samples", "check with --runs 1 or more")
    block = max(block_length(b), block_length(a))
    return LatencyChange(round(float(np.percentile(b, 50)), 4), round(float(np.percentile(a, 50)), 4),
                         round(float(np.percentile(b, 95)), 4), round(float(np.percentile(a, 95)), 4),
                         ratio_interval(b, a, 50, block), ratio_interval(b, a, 95, block), len(b), len(a),
                         unpreempted, block, RESAMPLES, tuple(before.latency_ms.samples))


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2): McNemar's exact one-sided p-value."""
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n if n else 1.0


def flips_needed(alpha: float = ALPHA) -> int:
    """The fewest discordant pairs, all of them losses, that are significant at `alpha` (5 at 0.05)."""
    return math.ceil(math.log(alpha) / math.log(0.5) + 1e-12)


def resolvable_loss(images: int, alpha: float = ALPHA) -> float:
    """The smallest top-1 loss (points) McNemar can call significant on `images` paired images."""
    return round(100.0 * flips_needed(alpha) / max(images, 1), 2)


def accuracy_change(before: Measurement, after: Measurement) -> AccuracyChange:
    a, b = before.accuracy, after.accuracy
    then = [p == t for p, t in zip(a.predictions, a.labels, strict=True)]
    now = [p == t for p, t in zip(b.predictions, b.labels, strict=True)]
    lost = sum(x and not y for x, y in zip(then, now, strict=True))
    gained = sum(y and not x for x, y in zip(then, now, strict=True))
    return AccuracyChange(len(now), a.top1, b.top1, lost, gained, round(binomial_tail(lost, lost + gained), 6),
                          resolvable_loss(len(now)))


def compare(earlier: Earlier, after: Measurement, baseline: Baseline, emulated: bool) -> Comparison:
    before = earlier.measured
    return Comparison(str(baseline.path), baseline.created,
                      None if emulated else latency_change(before, after), accuracy_change(before, after),
                      None if emulated else MemoryChange(before.peak_rss_mb, after.peak_rss_mb))


# ---- verdicts ---------------------------------------------------------------------------------


def resolution_warning(images: int, classes: int, asked: float, resolvable: float, what: str,
                       asked_what: str) -> str:
    """'' when `images` can resolve a change of `asked` points; else a warning saying what they can
    resolve (`resolvable` points) and the checkset size per class that would resolve `asked`."""
    if resolvable <= asked:
        return ""
    hint = ""
    if asked > 0:
        per_class = math.ceil(images * resolvable / asked / max(classes, 1))
        hint = f"; a checkset of {per_class} per class would (edgetl compile --checkset-per-class {per_class})"
    return (f"warning: {what} on {images} images is {resolvable:g} points, more than the {asked:g}-point "
            f"{asked_what}: too small to resolve it{hint}")


def verdicts(c: Comparison, gate: Gate, classes: int) -> list:
    """The comparison as `Verdict`s (budget names BUDGETS), so exit codes, JUnit and HTML follow."""
    out = []
    limit = round(1 + gate.max_slowdown / 100, 4)
    if c.latency is None:
        out.append(Verdict("baseline_latency_p95", limit, None, NOT_JUDGED, "emulated: timings are qemu's"))
    else:
        lat, iv = c.latency, c.latency.p95
        bad = iv.low > limit
        frames = (f"the {lat.frames_before}/{lat.frames_after} frames the OS did not preempt" if lat.unpreempted
                  else f"all {lat.frames_before}/{lat.frames_after} frames")
        out.append(Verdict("baseline_latency_p95", limit, iv.ratio, FAIL if bad else PASS,
                           f"p95 {lat.before_p95:g} -> {lat.after_p95:g} ms, x{iv.ratio:.3f} "
                           f"({LEVEL:.0%} interval x{iv.low:.3f}-x{iv.high:.3f}) "
                           f"{'wholly past' if bad else 'not wholly past'} x{limit:g} "
                           f"(max slowdown {gate.max_slowdown:g}%); p50 x{lat.p50.ratio:.3f} "
                           f"(x{lat.p50.low:.3f}-x{lat.p50.high:.3f}); on {frames}"))
    acc = c.accuracy
    loss = round(acc.before_top1 - acc.after_top1, 2)
    bad = acc.p_value < ALPHA and loss > gate.max_top1_loss
    warning = resolution_warning(acc.images, classes, gate.max_top1_loss, acc.resolvable_loss,
                                 f"the smallest significant loss ({flips_needed()} flips at p<{ALPHA:g})",
                                 "--max-top1-loss")
    why = (f"top-1 {acc.before_top1:g}% -> {acc.after_top1:g}% on {acc.images} paired images: {acc.lost} lost, "
           f"{acc.gained} gained, McNemar p={acc.p_value:.3g} "
           f"({'a significant loss' if acc.p_value < ALPHA else 'no significant loss'} at {ALPHA:g}"
           f"{f', over {gate.max_top1_loss:g} points' if bad else ''})")
    out.append(Verdict("baseline_top1", gate.max_top1_loss, loss, FAIL if bad else PASS,
                       f"{why}; {warning}" if warning else why, warning))
    if c.memory is None:
        out.append(Verdict("baseline_rss", gate.max_rss_growth, None, NOT_JUDGED, "emulated: memory is qemu's"))
    else:
        m = c.memory
        growth = round(100.0 * (m.after_mb / max(m.before_mb, 1e-9) - 1), 2)
        bad = growth > gate.max_rss_growth
        out.append(Verdict("baseline_rss", gate.max_rss_growth, growth, FAIL if bad else PASS,
                           f"peak RSS {m.before_mb:g} -> {m.after_mb:g} MB ({growth:+g}%) "
                           f"{'>' if bad else '<='} +{gate.max_rss_growth:g}%"))
    return out


def judge_against(results: list, baseline: Baseline, gate: Gate) -> None:
    """Each measured result held against its pair in `baseline`: its `Comparison` and verdicts added and
    its status updated. A pair whose checkset differs from the baseline's is refused (ConfigError)."""
    for r in results:
        if r.measured is None:
            continue  # broke or skipped: nothing to compare
        earlier = baseline.find(r.device, r.bundle)
        same_checkset(earlier, r.measured, f"{r.bundle} on {r.device}")
        r.baseline = compare(earlier, r.measured, baseline, r.emulated)
        r.verdicts += verdicts(r.baseline, gate, len(set(r.measured.accuracy.labels)))
        r.status = FAIL if any(v.status == FAIL for v in r.verdicts) else PASS
