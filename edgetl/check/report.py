"""What `edgetl check` writes: report.json for programs, JUnit XML for CI systems to gate on, and
one self-contained HTML page (inline SVG, no scripts, nothing fetched) for people.

JUnit: one <testsuite> per device and bundle, one <testcase> per budget (and per `--baseline`
comparison). A budget that failed is a <failure> of type "budget", a regression against the
baseline one of type "regression", a device that could not be reached or whose run broke is an <error> (CI systems
tell the two apart), and a budget not judged (timings under emulation) is <skipped>.
"""

from __future__ import annotations

import html
import json
import platform
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from edgetl import __version__
from edgetl.check import ERROR, FAIL, NOT_JUDGED, PASS, SKIPPED, Result, exit_code
from edgetl.check.baseline import LEVEL
from edgetl.fsutil import REPORT, staged_dir
from edgetl.runtime.atomic import write_file


def as_json(results: list[Result]) -> dict:
    return {"edgetl": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
            "exit_code": exit_code(results), "results": [r.to_dict() for r in results]}


def junit(results: list[Result]) -> bytes:
    """JUnit XML as Jenkins, GitLab and GitHub's reporters read it."""
    root = ET.Element("testsuites", name="edgetl check")
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for r in results:
        suite = ET.SubElement(root, "testsuite", name=f"{r.device}/{r.bundle}", timestamp=stamp,
                              hostname=r.device, time=f"{r.seconds:.3f}")
        props = ET.SubElement(suite, "properties")
        for key in ("target", "transport", "engine", "precision", "attempts"):
            ET.SubElement(props, "property", name=key, value=str(getattr(r, key)))
        ET.SubElement(props, "property", name="emulated", value=str(r.emulated).lower())
        counts = dict.fromkeys(totals, 0)
        classname = f"edgetl.check.{r.device}.{r.bundle}"
        if r.status in (ERROR, SKIPPED):
            case = ET.SubElement(suite, "testcase", classname=classname, name="check", time=f"{r.seconds:.3f}")
            if r.status == ERROR:
                ET.SubElement(case, "error", message=r.error or "the run broke", type="infrastructure").text = \
                    f"{r.error}\n(after {r.attempts} attempt(s); not a budget failure)"
                counts["errors"] += 1
            else:
                ET.SubElement(case, "skipped", message=r.error or "skipped")
                counts["skipped"] += 1
            counts["tests"] += 1
        for v in r.verdicts:
            case = ET.SubElement(suite, "testcase", classname=classname, name=v.budget, time="0")
            counts["tests"] += 1
            if v.status == FAIL:  # a regression against --baseline is a failure of its own type
                kind = "regression" if v.regression else "budget"
                ET.SubElement(case, "failure", message=v.why, type=kind).text = \
                    f"{v.budget}: measured {v.measured}, {'limit' if v.regression else 'budget'} {v.limit}\n{v.why}"
                counts["failures"] += 1
            elif v.status == NOT_JUDGED:
                ET.SubElement(case, "skipped", message=v.why)
                counts["skipped"] += 1
        if r.measured:
            ET.SubElement(suite, "system-out").text = _summary_text(r)
        for key, n in counts.items():
            suite.set(key, str(n))
            totals[key] += n
    for key, n in totals.items():
        if key != "skipped":
            root.set(key, str(n))
    root.set("time", f"{sum(r.seconds for r in results):.3f}")
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def _summary_text(r: Result) -> str:
    m = r.measured
    lat, th = m.latency_ms, m.thermals
    return (f"{r.bundle} ({r.engine} {r.precision}) on {r.device} ({r.target}, {r.transport})\n"
            f"latency ms: p50 {lat.p50} p90 {lat.p90} p95 {lat.p95} p99 {lat.p99} max {lat.max} "
            f"over {lat.runs} runs, ms per {m.unit}; {m.throughput_fps} {m.unit.split()[0]}s/s\n"
            f"{_share_text(m)}\n"
            f"peak RSS {m.peak_rss_mb} MB; top-1 {m.accuracy.top1}% on {m.accuracy.images} images\n"
            f"thermals: {th.before.to_dict()} -> {th.after.to_dict()}; throttled: {th.throttled} ({th.evidence})\n")


def _share_text(m) -> str:
    e = m.engine_share
    if e is None:
        return "engine share: not measured (the engine invokes more than one frame at a time)"
    return (f"engine share: invoke p50 {e.invoke_p50} ms of predict p50 {e.predict_p50} ms ({e.share:.1%}); "
            f"the runtime adds {e.runtime_ms} ms per {m.unit.split()[0]}")


# ---- HTML -------------------------------------------------------------------------------------

COLORS = {PASS: "#1a7f37", FAIL: "#cf222e", ERROR: "#9a6700", SKIPPED: "#6e7781", NOT_JUDGED: "#6e7781"}
PALETTE = ["#0969da", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#cf222e", "#116329", "#0550ae"]
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;color:#1f2328}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}.sub{color:#656d76;margin-bottom:16px}
table{border-collapse:collapse;width:100%}th,td{padding:5px 8px;border-bottom:1px solid #d0d7de;text-align:left}
th{background:#f6f8fa;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:16px}.card{border:1px solid #d0d7de;border-radius:6px;padding:8px}
.card h3{font-size:13px;margin:0 0 4px}.note{color:#656d76;font-size:12px}
"""


def _badge(status: str) -> str:
    return f'<span class="badge" style="background:{COLORS.get(status, "#6e7781")}">{html.escape(status)}</span>'


def _num(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def histogram(samples: list[float], p50: float, p95: float, budget: float | None, title: str,
              width: int = 340, height: int = 190, unit: str = "frame") -> str:
    """Latency samples as an SVG histogram, with p50, p95 and the budget marked."""
    left, bottom, top, right = 36, 36, 10, 10
    lo, hi = min(samples), max(max(samples), p95)
    if budget is not None and budget < hi * 3:
        hi = max(hi, budget)
    hi = hi if hi > lo else lo + 1e-3
    bins = 30
    counts = [0] * bins
    for s in samples:
        counts[min(bins - 1, int((s - lo) / (hi - lo) * bins))] += 1
    peak = max(counts) or 1
    w, h = width - left - right, height - top - bottom

    def x(v):
        return left + (v - lo) / (hi - lo) * w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f"<title>{html.escape(title)}</title>",
             f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#8c959f"/>']
    for i, c in enumerate(counts):
        bh = c / peak * h
        parts.append(f'<rect x="{left + i * w / bins + 0.5:.1f}" y="{top + h - bh:.1f}" width="{w / bins - 1:.1f}" '
                     f'height="{bh:.1f}" fill="#54aeff"/>')
    for value, label, color in ((p50, "p50", "#0969da"), (p95, "p95", "#8250df"), (budget, "budget", "#cf222e")):
        if value is not None and lo <= value <= hi:
            parts.append(f'<line x1="{x(value):.1f}" y1="{top}" x2="{x(value):.1f}" y2="{top + h}" stroke="{color}" '
                         f'stroke-width="1.5" stroke-dasharray="{"4 3" if label == "budget" else "none"}"/>')
            parts.append(f'<text x="{x(value) + 3:.1f}" y="{top + 10}" font-size="10" fill="{color}">{label}</text>')
    for v, anchor in ((lo, "start"), ((lo + hi) / 2, "middle"), (hi, "end")):  # the ends stay inside
        parts.append(f'<text x="{x(v):.1f}" y="{top + h + 13}" font-size="10" text-anchor="{anchor}" '
                     f'fill="#656d76">{v:.3g}</text>')
    parts.append(f'<text x="{left + w / 2}" y="{height - 4}" font-size="10" text-anchor="middle" '
                 f'fill="#656d76">ms per {html.escape(unit)}</text>')
    parts.append(f'<text x="4" y="{top + 10}" font-size="10" fill="#656d76">{peak}</text></svg>')
    return "".join(parts)


BEFORE, AFTER = "#8c959f", "#0969da"  # the baseline grey, this run blue
LEVEL_TEXT = f"{LEVEL:.0%}"


def overlay(before: list[float], after: list[float], title: str, width: int = 340, height: int = 190,
            unit: str = "frame") -> str:
    """The baseline's and this run's latency samples as two histograms on shared bins, with a legend and
    each run's p95 marked in its colour."""
    left, bottom, top, right = 36, 36, 22, 10
    both = list(before) + list(after)
    lo, hi = min(both), max(both)
    hi = hi if hi > lo else lo + 1e-3
    bins = 30
    w, h = width - left - right, height - top - bottom

    def counts(samples):
        c = [0] * bins
        for v in samples:
            c[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
        return [n / max(len(samples), 1) for n in c]  # shares: runs of different lengths compare

    shares = counts(before), counts(after)
    peak = max(max(shares[0]), max(shares[1])) or 1

    def x(v):
        return left + (v - lo) / (hi - lo) * w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f"<title>{html.escape(title)}</title>",
             f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#8c959f"/>']
    for share, color in zip(shares, (BEFORE, AFTER), strict=True):
        for i, c in enumerate(share):
            bh = c / peak * h
            parts.append(f'<rect x="{left + i * w / bins + 0.5:.1f}" y="{top + h - bh:.1f}" '
                         f'width="{w / bins - 1:.1f}" height="{bh:.1f}" fill="{color}" fill-opacity="0.55"/>')
    for samples, color in ((before, BEFORE), (after, AFTER)):
        p95 = sorted(samples)[min(len(samples) - 1, int(0.95 * len(samples)))]
        parts.append(f'<line x1="{x(p95):.1f}" y1="{top}" x2="{x(p95):.1f}" y2="{top + h}" stroke="{color}" '
                     f'stroke-width="1.5" stroke-dasharray="4 3"/>')
    for i, (label, color) in enumerate((("baseline", BEFORE), ("this run", AFTER))):
        lx = left + 4 + i * 90
        parts.append(f'<rect x="{lx}" y="4" width="10" height="10" fill="{color}" fill-opacity="0.55"/>')
        parts.append(f'<text x="{lx + 14}" y="13" font-size="10" fill="#1f2328">{label} (p95 dashed)</text>')
    for v, anchor in ((lo, "start"), ((lo + hi) / 2, "middle"), (hi, "end")):
        parts.append(f'<text x="{x(v):.1f}" y="{top + h + 13}" font-size="10" text-anchor="{anchor}" '
                     f'fill="#656d76">{v:.3g}</text>')
    parts.append(f'<text x="{left + w / 2}" y="{height - 4}" font-size="10" text-anchor="middle" '
                 f'fill="#656d76">ms per {html.escape(unit)} (share of frames)</text></svg>')
    return "".join(parts)


def _before_after(r: Result) -> str:
    """The small before/after table of one pair against its baseline, each judged figure coloured."""
    c, m = r.baseline, r.measured
    verdicts = {v.budget: v for v in r.verdicts}

    def status(budget: str) -> str:
        v = verdicts.get(budget)
        return (f'<td style="color:{COLORS.get(v.status, "#1f2328")}" title="{html.escape(v.why)}">'
                f"{html.escape(v.status)}</td>") if v else "<td>-</td>"

    rows = []
    if c.latency is not None:
        lat = c.latency
        for name, before, after, iv, budget in (("p50 ms", lat.before_p50, lat.after_p50, lat.p50, None),
                                                ("p95 ms", lat.before_p95, lat.after_p95, lat.p95,
                                                 "baseline_latency_p95")):
            rows.append(f'<tr><td>{name}</td><td class="n">{before:.3f}</td><td class="n">{after:.3f}</td>'
                        f'<td class="n">x{iv.ratio:.3f} (x{iv.low:.3f}-x{iv.high:.3f})</td>'
                        f"{status(budget) if budget else '<td>reported</td>'}</tr>")
    a = c.accuracy
    rows.append(f'<tr><td>top-1 %</td><td class="n">{a.before_top1:.1f}</td><td class="n">{a.after_top1:.1f}</td>'
                f'<td class="n">{a.lost} lost, {a.gained} gained; McNemar p={a.p_value:.3g}</td>'
                f'{status("baseline_top1")}</tr>')
    if c.memory is not None:
        rows.append(f'<tr><td>peak RSS MB</td><td class="n">{c.memory.before_mb:.0f}</td>'
                    f'<td class="n">{c.memory.after_mb:.0f}</td>'
                    f'<td class="n">{100 * (c.memory.after_mb / max(c.memory.before_mb, 1e-9) - 1):+.1f}%</td>'
                    f'{status("baseline_rss")}</tr>')
    warnings = "".join(f'<div class="note">{html.escape(v.warning)}</div>' for v in r.verdicts
                       if v.regression and v.warning)
    note = "" if c.latency is None else (
        f'<div class="note">intervals: {LEVEL_TEXT} block bootstrap ({c.latency.block}-frame blocks, '
        f"{c.latency.resamples} resamples) of "
        f"{'the frames the OS did not preempt' if c.latency.unpreempted else 'all frames'}</div>")
    plot = "" if c.latency is None else overlay(list(c.latency.before_samples), list(m.latency_ms.samples),
                                                f"{r.device} · {r.bundle}: baseline and this run", unit=m.unit)
    return (f'<div class="card"><h3>{html.escape(r.device)} · {html.escape(r.bundle)} against '
            f"{html.escape(c.created)}</h3>{plot}"
            f'<table><thead><tr><th></th><th>baseline</th><th>this run</th><th>change</th><th>verdict</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>{note}{warnings}</div>')


def scatter(points: list[tuple[str, float, float, str]], width: int = 620, height: int = 320) -> str:
    """(label, p50 ms, top-1 %, series) points: latency against accuracy, one colour per device."""
    left, bottom, top, right = 48, 40, 14, 150
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    x0, x1 = 0.0, max(xs) * 1.15
    y0, y1 = max(0.0, min(ys) - 10), min(100.0, max(ys) + 5)
    y1 = y1 if y1 > y0 else y0 + 1
    w, h = width - left - right, height - top - bottom
    series = sorted({p[3] for p in points})

    def px(v):
        return left + (v - x0) / (x1 - x0) * w

    def py(v):
        return top + h - (v - y0) / (y1 - y0) * h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             "<title>latency against accuracy</title>",
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#d0d7de"/>']
    for i in range(5):
        vx, vy = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        parts.append(f'<text x="{px(vx):.1f}" y="{top + h + 14}" font-size="10" text-anchor="middle" '
                     f'fill="#656d76">{vx:.3g}</text>')
        parts.append(f'<text x="{left - 4}" y="{py(vy) + 3:.1f}" font-size="10" text-anchor="end" '
                     f'fill="#656d76">{vy:.0f}</text>')
    parts.append(f'<text x="{left + w / 2}" y="{height - 8}" font-size="11" text-anchor="middle" '
                 f'fill="#1f2328">p50 latency, ms per frame</text>')
    parts.append(f'<text x="12" y="{top + h / 2}" font-size="11" text-anchor="middle" fill="#1f2328" '
                 f'transform="rotate(-90 12 {top + h / 2})">top-1 %</text>')
    for label, lx, ly, s in points:
        color = PALETTE[series.index(s) % len(PALETTE)]
        parts.append(f'<circle cx="{px(lx):.1f}" cy="{py(ly):.1f}" r="5" fill="{color}"/>')
        parts.append(f'<text x="{px(lx) + 7:.1f}" y="{py(ly) + 4:.1f}" font-size="10" '
                     f'fill="#1f2328">{html.escape(label)}</text>')
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        parts.append(f'<circle cx="{left + w + 16}" cy="{top + 10 + i * 16}" r="5" fill="{color}"/>')
        parts.append(f'<text x="{left + w + 26}" y="{top + 14 + i * 16}" font-size="11">{html.escape(s)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _row(r: Result) -> str:
    m = r.measured
    verdicts = {v.budget: v for v in r.verdicts}

    def judged(budget: str, text: str) -> str:
        v = verdicts.get(budget)
        color = COLORS.get(v.status, "#1f2328") if v else "#1f2328"
        return f'<td class="n" style="color:{color}" title="{html.escape(v.why) if v else ""}">{text}</td>'

    cells = "".join(f"<td>{html.escape(c)}</td>" for c in (r.device, r.target, r.transport,
                                                          f"{r.bundle} {r.engine or ''} {r.precision or ''}"))
    lat = m.latency_ms if m else None
    cells += f'<td class="n">{_num(lat and lat.p50)}</td>' + judged("latency_p95_ms", _num(lat and lat.p95))
    cells += f'<td class="n">{_num(lat and lat.p99)}</td>'
    share = m.engine_share if m else None
    cells += (f'<td class="n" title="engine invoke p50 {share.invoke_p50} ms of predict p50 {share.predict_p50} ms">'
              f"{share.share:.0%}</td>" if share else '<td class="n">-</td>')
    cells += f'<td class="n">{_num(m and m.throughput_fps, "{:.1f}")}</td>'
    cells += judged("max_rss_mb", _num(m and m.peak_rss_mb, "{:.0f}"))
    cells += judged("min_top1", _num(m and m.accuracy.top1, "{:.1f}"))
    temps = (m.thermals.before.temp_c, m.thermals.after.temp_c) if m else (None, None)
    thermal = "-" if temps == (None, None) else f"{_num(temps[0], '{:.0f}')}&rarr;{_num(temps[1], '{:.0f}')} C"
    if m and m.thermals.throttled:
        thermal += " <b>throttled</b>"
    return f'<tr>{cells}<td class="n">{thermal}</td><td>{_badge(r.status)}</td></tr>'


def page(results: list[Result]) -> str:
    code = exit_code(results)
    regressed = any(v.regression and v.status == FAIL for r in results for v in r.verdicts)
    verdict = {0: ("every budget holds", PASS), 1: ("a regression or budget failed" if regressed else
                                                     "a budget failed", FAIL),
               3: ("a device could not be checked", ERROR)}[code]
    rows = []
    for r in results:
        rows.append(_row(r))
        if r.error:
            rows.append(f'<tr><td colspan="13" class="note">{html.escape(r.device)}: {html.escape(r.error)} '
                        f"(after {r.attempts} attempt(s))</td></tr>")
    cards = []
    for r in results:
        if not r.measured:
            continue
        lat = r.measured.latency_ms
        budget = r.verdict("latency_p95_ms")
        title = f"{r.device} · {r.bundle} ({r.engine} {r.precision})"
        note = ("emulated: timings are qemu's, not judged" if r.emulated else
                f"{lat.runs} runs after {lat.warmup} warm-up, ms per {r.measured.unit}; budget p95 {budget.limit:g} ms")
        note += "; " + _share_text(r.measured)
        plot = histogram(lat.samples, lat.p50, lat.p95, None if r.emulated else budget.limit, title,
                         unit=r.measured.unit)
        cards.append(f'<div class="card"><h3>{html.escape(title)}</h3>'
                     f"{plot}"
                     f'<div class="note">{html.escape(note)}</div></div>')
    points = [(f"{r.bundle} {r.precision}", r.measured.latency_ms.p50, r.measured.accuracy.top1, r.device)
              for r in results if r.measured and not r.emulated]
    emulated = sorted({r.device for r in results if r.emulated})
    plot = scatter(points) if points else '<p class="note">no device with meaningful timings</p>'
    if emulated:
        plot += f'<p class="note">left out (emulated, timings not meaningful): {html.escape(", ".join(emulated))}</p>'
    compared = "".join(_before_after(r) for r in results if r.baseline and r.measured)
    against = (f'<h2>Against the baseline</h2><div class="grid">{compared}</div>' if compared else "")
    head = ["device", "target", "transport", "bundle", "p50 ms", "p95 ms", "p99 ms", "engine share", "frames/s",
            "RSS MB", "top-1 %", "temp", "status"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgetl check: {html.escape(verdict[0])}</title>
<style>{CSS}</style></head><body>
<h1>edgetl check {_badge(verdict[1])}</h1>
<div class="sub">{html.escape(verdict[0])} &middot; {len(results)} bundle/device pair(s) &middot; exit {code}
&middot; {html.escape(time.strftime("%Y-%m-%d %H:%M"))} on {html.escape(platform.node())}</div>
<table><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead><tbody>
{"".join(rows)}</tbody></table>
<p class="note">Coloured figures are judged against the device's budgets (device file over target); hover for why.</p>
<h2>Latency per device</h2><div class="grid">{"".join(cards) or '<p class="note">nothing measured</p>'}</div>
<h2>Latency against accuracy, per bundle and precision</h2>{plot}
{against}
</body></html>
"""


def write(results: list[Result], report_dir: Path | None = None, junit_file: Path | None = None) -> list[Path]:
    """report.json and report.html into `report_dir` (replaced whole), the JUnit file in place; returns them."""
    written = []
    if report_dir is not None:
        report_dir = Path(report_dir)
        with staged_dir(report_dir, REPORT) as tmp:
            (tmp / "report.json").write_text(json.dumps(as_json(results), indent=2) + "\n")
            (tmp / "report.html").write_text(page(results))
        written += [report_dir / "report.json", report_dir / "report.html"]
    if junit_file is not None:
        write_file(Path(junit_file), junit(results), shared=True)
        written.append(Path(junit_file))
    return written
